"""6. Bad arguments: CheemsConfig fields of the expert layers, the CDMoE / PEER / PKM / GatedMLP / MoE constructors and
forwards. Expected (docs/design.md, Public API): a one-line ValueError naming the argument, its value and what is allowed."""
import math
import warnings
warnings.filterwarnings("ignore")
import torch
import wonderful_matrices as wm
from wonderful_matrices.layers import CDMoE, PEER, PKM, GatedMLP, MoE

rows = []


def attempt(label, fn, argument):
    try:
        r = fn()
        verdict = "ACCEPTED (no error)"
        ok = False
        if isinstance(r, (CDMoE, PEER, PKM, GatedMLP, MoE)):
            verdict += f" -> built {type(r).__name__}"
    except ValueError as e:
        msg = str(e)
        ok = argument in msg and "\n" not in msg
        verdict = f"ValueError: {msg}"
    except Exception as e:  # noqa
        ok = False
        verdict = f"{type(e).__name__} (not ValueError): {str(e).splitlines()[0][:150]}"
    rows.append((ok, label))
    print(f"[{'ok ' if ok else 'BAD'}] {label}: {verdict}")


tiny = dict(vocab_size=64, hidden_size=16, num_hidden_layers=1, mixer_types=["attn"], ffn_types=["cdmoe"],
            num_attention_heads=2, intermediate_size=8, cdmoe_num_experts=16, cdmoe_num_heads=2, cdmoe_top_k=2,
            cdmoe_retrieval_dim=4)


def cfg(**kw):
    return lambda: wm.CheemsConfig(**{**tiny, **kw})


print("-- CheemsConfig --")
for field, value in [("cdmoe_num_experts", 15), ("cdmoe_num_experts", 0), ("cdmoe_num_experts", -4),
                     ("cdmoe_num_experts", 16.0), ("cdmoe_num_experts", True), ("cdmoe_top_k", 5),
                     ("cdmoe_top_k", 0), ("cdmoe_top_k", -1), ("cdmoe_top_k", 2.0), ("cdmoe_num_heads", 0),
                     ("cdmoe_num_heads", -1), ("cdmoe_retrieval_dim", 3), ("cdmoe_retrieval_dim", 0),
                     ("cdmoe_retrieval_dim", -2), ("intermediate_size", 0), ("balance_loss_weight", -0.1),
                     ("balance_loss_weight", math.nan), ("balance_loss_weight", math.inf),
                     ("balance_loss_weight", "0.1"), ("cdmoe_backend", "naive"), ("hidden_size", 0)]:
    attempt(f"CheemsConfig({field}={value!r})", cfg(**{field: value}), field)
moe = dict(tiny, ffn_types=["moe"])
for field, value in [("moe_num_experts", 0), ("moe_top_k", 17), ("moe_top_k", 0), ("moe_intermediate_size", 0),
                     ("moe_shared_intermediate_size", -1), ("moe_implementation", "fast")]:
    attempt(f"CheemsConfig(ffn moe, {field}={value!r})", lambda f=field, v=value: wm.CheemsConfig(**{**moe, f: v}),
            field)

print("\n-- layer constructors --")
base = dict(hidden_size=8, intermediate_size=6, num_experts=16, num_heads=2, top_k=2, retrieval_dim=4)
for field, value in [("hidden_size", True), ("top_k", True), ("num_heads", True), ("hidden_size", 0),
                     ("num_experts", 15), ("num_experts", 16.0), ("top_k", 5), ("retrieval_dim", 5),
                     ("balance_loss_weight", "0.1"), ("balance_loss_weight", None), ("balance_loss_weight", math.inf),
                     ("intermediate_size", 0), ("activation", "tanh"), ("backend", "naive")]:
    attempt(f"CDMoE({field}={value!r})", lambda f=field, v=value: CDMoE(**{**base, f: v}), field)
for cls in (PEER, PKM):
    for field, value in [("num_experts", 15), ("top_k", 5), ("key_dim", 3), ("num_heads", 0), ("hidden_size", 0)]:
        kw = dict(hidden_size=8, num_experts=16, num_heads=2, top_k=2, key_dim=4)
        kw[field] = value
        attempt(f"{cls.__name__}({field}={value!r})", lambda c=cls, k=kw: c(**k), field)
for field, value in [("intermediate_size", 2.5), ("hidden_size", "8"), ("intermediate_size", 0)]:
    kw = dict(hidden_size=8, intermediate_size=4)
    kw[field] = value
    attempt(f"GatedMLP({field}={value!r})", lambda k=kw: GatedMLP(**k), field)

attempt("CDMoE(top_k=True) then forward", lambda: CDMoE(**{**base, "top_k": True})(torch.randn(2, 8)), "top_k")
print("\n-- forward with an input of the wrong width (layer width 8, input width 7) --")
x = torch.randn(3, 7)
attempt("CDMoE(...)(x of width 7)", lambda: CDMoE(**base)(x), "hidden_states")
attempt("MoE(...)(x of width 7)", lambda: MoE(8, 4, 4, 2)(x), "hidden_states")
attempt("PEER(...)(x of width 7)", lambda: PEER(8, 16, num_heads=2, top_k=2, key_dim=4)(x), "x")
attempt("PKM(...)(x of width 7)", lambda: PKM(8, 16, num_heads=2, top_k=2, key_dim=4)(x), "x")
attempt("GatedMLP(...)(x of width 7)", lambda: GatedMLP(8, 4)(x), "x")

print(f"\n{sum(not ok for ok, _ in rows)} of {len(rows)} cases do not give a ValueError naming the argument")

print("\n-- forward with an input of the wrong dtype (float32 layer) --")
for dt in (torch.float64, torch.bfloat16, torch.int64):
    xi = torch.ones(3, 8, dtype=dt)
    attempt(f"CDMoE(...)(x {dt})", lambda xi=xi: CDMoE(**base)(xi), "hidden_states")
