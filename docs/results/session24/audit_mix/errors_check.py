"""Bad arguments to the public ops: each should raise a one-line ValueError naming the argument."""
import torch, traceback
import wonderful_matrices as wm
ops = wm.ops
b, l, h, p, g, n = 1, 5, 2, 3, 1, 4
x = torch.randn(b, l, h, p); dt = torch.rand(b, l, h); A = -torch.rand(h) - 0.1
B = torch.randn(b, l, g, n); C = torch.randn(b, l, g, n)
q = torch.randn(1, 5, 2, 4); k = torch.randn(1, 5, 1, 4); v = torch.randn(1, 5, 1, 4); bias = torch.zeros(1, 5, 1)
S = torch.zeros(b, h, p, n)
cases = {
    "ssd chunk_size=3": lambda: ops.ssd(x, dt, A, B, C, chunk_size=3),
    "ssd chunk_size=0": lambda: ops.ssd(x, dt, A, B, C, chunk_size=0),
    "ssd x int": lambda: ops.ssd(x.long(), dt, A, B, C),
    "ssd x 3-D": lambda: ops.ssd(x[0], dt, A, B, C),
    "ssd dt wrong shape": lambda: ops.ssd(x, dt[..., :1], A, B, C),
    "ssd A wrong shape": lambda: ops.ssd(x, dt, A[:1], B, C),
    "ssd A positive": lambda: ops.ssd(x, dt, -A, B, C),
    "ssd dt negative": lambda: ops.ssd(x, -dt, A, B, C),
    "ssd B groups not dividing": lambda: ops.ssd(x, dt, A, torch.randn(b, l, 3, n), torch.randn(b, l, 3, n)),
    "ssd C shape != B": lambda: ops.ssd(x, dt, A, B, C[..., :2]),
    "ssd C 3-D": lambda: ops.ssd(x, dt, A, B, C[:, :, 0]),
    "ssd C int": lambda: ops.ssd(x, dt, A, B, C.long()),
    "ssd D wrong shape": lambda: ops.ssd(x, dt, A, B, C, D=torch.ones(3)),
    "ssd D list": lambda: ops.ssd(x, dt, A, B, C, D=[1.0, 1.0]),
    "ssd A list": lambda: ops.ssd(x, dt, [-1.0, -1.0], B, C),
    "ssd init wrong shape": lambda: ops.ssd(x, dt, A, B, C, initial_state=torch.zeros(b, h, p, n + 1)),
    "ssd backend bogus": lambda: ops.ssd(x, dt, A, B, C, backend="cuda"),
    "ssd seq_idx float": lambda: ops.ssd(x, dt, A, B, C, seq_idx=torch.zeros(b, l)),
    "ssd seq_idx decreasing": lambda: ops.ssd(x, dt, A, B, C, seq_idx=torch.tensor([[0, 1, 0, 1, 1]])),
    "ssd seq_idx wrong shape": lambda: ops.ssd(x, dt, A, B, C, seq_idx=torch.zeros(b, l + 1, dtype=torch.long)),
    "ssd x_activation bogus": lambda: ops.ssd(x, dt, A, B, C, x_activation="relu"),
    "ssd dt int": lambda: ops.ssd(x, dt.long(), A, B, C),
    "ssd mixed dtypes x f32 B f64": lambda: ops.ssd(x, dt, A, B.double(), C.double(), backend="torch"),
    "ssd_step state wrong": lambda: ops.ssd_step(torch.zeros(b, h, p), x[:, 0], dt[:, 0], A, B[:, 0], C[:, 0]),
    "ssd_step dt_t wrong": lambda: ops.ssd_step(S, x[:, 0], dt[:, 0, :1], A, B[:, 0], C[:, 0]),
    "ssd_step x_t 4-D": lambda: ops.ssd_step(S, x, dt[:, 0], A, B[:, 0], C[:, 0]),
    "ssd_step B_t 4-D": lambda: ops.ssd_step(S, x[:, 0], dt[:, 0], A, B, C[:, 0]),
    "ssd_step C_t shape": lambda: ops.ssd_step(S, x[:, 0], dt[:, 0], A, B[:, 0], C[:, 0, :, :2]),
    "ssd_step A positive": lambda: ops.ssd_step(S, x[:, 0], dt[:, 0], -A, B[:, 0], C[:, 0]),
    "dma keep_window=0": lambda: ops.dynamic_mask_attention(q, k, v, bias, keep_window=0),
    "dma keep_window=1.5": lambda: ops.dynamic_mask_attention(q, k, v, bias, keep_window=1.5),
    "dma keep_window=True": lambda: ops.dynamic_mask_attention(q, k, v, bias, keep_window=True),
    "dma bias wrong shape": lambda: ops.dynamic_mask_attention(q, k, v, bias[..., 0]),
    "dma hq % hkv": lambda: ops.dynamic_mask_attention(q, torch.randn(1, 5, 3, 4), torch.randn(1, 5, 3, 4), torch.zeros(1, 5, 3)),
    "dma head_dim mismatch": lambda: ops.dynamic_mask_attention(q, k[..., :2], v[..., :2], bias),
    "dma lq > lk causal": lambda: ops.dynamic_mask_attention(q, k[:, :3], v[:, :3], bias[:, :3]),
    "dma v shape": lambda: ops.dynamic_mask_attention(q, k, v[:, :3], bias),
    "dma q 3-D": lambda: ops.dynamic_mask_attention(q[0], k, v, bias),
    "dma k 3-D": lambda: ops.dynamic_mask_attention(q, k[0], v, bias),
    "dma v 3-D": lambda: ops.dynamic_mask_attention(q, k, v[0], bias),
    "dma int q": lambda: ops.dynamic_mask_attention(q.long(), k, v, bias),
    "dma k dtype differs": lambda: ops.dynamic_mask_attention(q, k.double(), v.double(), bias),
    "dma bias +inf": lambda: ops.dynamic_mask_attention(q, k, v, bias + float("inf")),
    "dma bias NaN": lambda: ops.dynamic_mask_attention(q, k, v, bias * float("nan")),
    "dma scale=0": lambda: ops.dynamic_mask_attention(q, k, v, bias, scale=0.0),
    "dma causal=1": lambda: ops.dynamic_mask_attention(q, k, v, bias, causal=1),
    "dma backend bogus": lambda: ops.dynamic_mask_attention(q, k, v, bias, backend="flash"),
    "dma seq_idx float": lambda: ops.dynamic_mask_attention(q, k, v, bias, seq_idx=torch.zeros(1, 5)),
    "dma seq_idx decreasing": lambda: ops.dynamic_mask_attention(q, k, v, bias, seq_idx=torch.tensor([[1, 0, 0, 0, 0]])),
    "dma seq_idx not causal": lambda: ops.dynamic_mask_attention(q, k, v, bias, causal=False, seq_idx=torch.zeros(1, 5, dtype=torch.long)),
    "dma seq_idx lq<lk": lambda: ops.dynamic_mask_attention(q[:, :3], k, v, bias, seq_idx=torch.zeros(1, 3, dtype=torch.long)),
    "dma empty seq": lambda: ops.dynamic_mask_attention(q[:, :0], k, v, bias),
    "dma batch mismatch": lambda: ops.dynamic_mask_attention(q, k.expand(2, -1, -1, -1), v.expand(2, -1, -1, -1), bias.expand(2, -1, -1)),
    "dma bias int": lambda: ops.dynamic_mask_attention(q, k, v, bias.long()),
    "dma bias list": lambda: ops.dynamic_mask_attention(q, k, v, [0.0]),
}
for name, f in cases.items():
    try:
        f()
        print(f"{name:32s} NO ERROR")
    except ValueError as e:
        msg = str(e)
        print(f"{name:32s} ValueError{' (MULTI-LINE)' if chr(10) in msg else ''}: {msg[:160]}")
    except Exception as e:
        tb = traceback.extract_tb(e.__traceback__)[-1]
        print(f"{name:32s} DEEP {type(e).__name__}: {str(e)[:120]}  [at {tb.filename.split('src/')[-1]}:{tb.lineno}]")
