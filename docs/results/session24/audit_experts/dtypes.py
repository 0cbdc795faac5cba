"""8. Half precision on the CPU torch paths: CDMoE / PEER / PKM / expert_mixture / product_key_topk in bf16 and fp16
(no crash, output dtype, error vs float64 on tokens routed identically), and torch.autocast("cpu") bf16/fp16."""
import os
import sys
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch
from ref import cdmoe_layer_reference, rel_err, brute_topk
from wonderful_matrices.layers import CDMoE, PEER, PKM
from wonderful_matrices.ops import product_key_topk, expert_mixture

torch.manual_seed(0)
problems = []
cfg = dict(hidden_size=16, intermediate_size=24, num_experts=64, num_heads=2, top_k=4, retrieval_dim=8)

print("-- CDMoE in half precision (parameters and input) --")
for backend in ("torch", "dense", "auto"):
    for dtype in (torch.bfloat16, torch.float16):
        base = CDMoE(**cfg).double()
        x = torch.randn(4, 9, 16, dtype=torch.float64)
        m = CDMoE(**cfg, backend=backend, balance_loss_weight=0.1).to(dtype).train()
        m.load_state_dict(base.state_dict())
        base.load_state_dict({k: v.double() for k, v in m.state_dict().items()})  # same rounded weights
        xh = x.to(dtype).requires_grad_()
        try:
            y = m(xh)
            (y.float().square().sum() + m.aux_loss).backward()
            ok_grads = all(p.grad is not None and torch.isfinite(p.grad.float()).all() for p in m.parameters())
        except Exception as e:  # noqa
            print(f"{backend} {dtype}: CRASH {type(e).__name__}: {e}")
            problems.append((backend, str(dtype), "crash"))
            continue
        with torch.no_grad():
            ref = cdmoe_layer_reference(base, xh.detach().double())
            ids_h = m.route(m.query(xh.detach().reshape(-1, 16)))[1]
            ids_r = brute_topk(base.query(xh.detach().double().reshape(-1, 16)), base.keys, 4)[1]
            same = (ids_h.sort(-1).values == ids_r.sort(-1).values).all(-1).all(-1)
        e = rel_err(y.reshape(-1, 16)[same], ref.reshape(-1, 16)[same])
        eall = rel_err(y, ref)
        bad = y.dtype != dtype or e > 2e-2 or not ok_grads
        problems += [(backend, str(dtype))] if bad else []
        print(f"{backend:5s} {str(dtype)[6:]:8s}: out dtype {str(y.dtype)[6:]}, aux dtype {m.aux_loss.dtype}, "
              f"grads finite {ok_grads}; rel err vs float64 on {int(same.sum())}/36 same-routed tokens {e:.1e} "
              f"(all tokens {eall:.1e}) {'FAIL' if bad else 'ok'}")

print("\n-- autocast on the CPU (float32 parameters and input) --")
for backend in ("torch", "dense"):
    for dtype in (torch.bfloat16, torch.float16):
        m = CDMoE(**cfg, backend=backend, balance_loss_weight=0.1).train()
        x = torch.randn(3, 5, 16, requires_grad=True)
        try:
            with torch.autocast("cpu", dtype=dtype):
                y = m(x)
                loss = y.float().square().mean() + m.aux_loss
            loss.backward()
            e = rel_err(y, m(x))
            fin = all(torch.isfinite(p.grad).all() for p in m.parameters())
            print(f"autocast {str(dtype)[6:]:8s} {backend}: y dtype {y.dtype}, rel err vs float32 {e:.1e}, grads "
                  f"finite {fin}, grad dtypes {sorted({str(p.grad.dtype) for p in m.parameters()})}")
            if not fin:  # (the error vs float32 includes tokens whose experts flip: see autocast_routing.py)
                problems.append(("autocast", backend, str(dtype)))
        except Exception as ex:  # noqa
            print(f"autocast {dtype} {backend}: CRASH {type(ex).__name__}: {ex}")
            problems.append(("autocast crash", backend, str(dtype)))

print("\n-- PEER / PKM in half precision --")
for cls, kw in ((PEER, dict(num_heads=2, top_k=3, key_dim=8)), (PKM, dict(num_heads=2, top_k=3, key_dim=8))):
    for dtype in (torch.bfloat16, torch.float16):
        for backend in ("torch", "dense"):
            m = cls(16, 49, backend=backend, **kw).to(dtype)
            x = torch.randn(2, 7, 16, dtype=dtype, requires_grad=True)
            try:
                y = m(x)
                y.float().sum().backward()
                print(f"{cls.__name__} {str(dtype)[6:]:8s} {backend}: out {y.dtype} finite {torch.isfinite(y).all().item()}")
                if y.dtype != dtype:
                    problems.append((cls.__name__, str(dtype), backend, "dtype"))
            except Exception as ex:  # noqa
                print(f"{cls.__name__} {dtype} {backend}: CRASH {type(ex).__name__}: {ex}")
                problems.append((cls.__name__, str(dtype), backend, "crash"))

print("\n-- ops in half precision --")
for dtype in (torch.bfloat16, torch.float16):
    q = torch.randn(9, 2, 2, 4, dtype=dtype)
    K = torch.randn(2, 2, 6, 4, dtype=dtype)
    for b in ("naive", "torch"):
        s, i = product_key_topk(q, K, 3, backend=b)
        rs, ri = brute_topk(q, K, 3)
        print(f"product_key_topk {str(dtype)[6:]} {b}: scores dtype {s.dtype}, max |score - float64 brute force on "
              f"the same rounded inputs| {(s.double() - rs).abs().max().item():.2e}, ids equal {torch.equal(i, ri)}")
    x = torch.randn(7, 6, dtype=dtype)
    ids = torch.randint(0, 10, (7, 2, 3))
    g = torch.rand(7, 2, 3)
    dn, upt = torch.randn(10, 6, dtype=dtype), torch.randn(10, 6, dtype=dtype)
    ref = expert_mixture(x.double(), ids, g.double(), dn.double(), upt.double(), backend="naive")
    for b in ("naive", "torch", "dense"):
        y = expert_mixture(x, ids, g, dn, upt, backend=b)
        print(f"expert_mixture {str(dtype)[6:]} {b}: out {y.dtype}, rel err vs float64 {rel_err(y, ref):.1e}")
print("\nPROBLEMS:", problems)
