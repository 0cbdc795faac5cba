import os
import sys, tempfile, torch, traceback
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
torch.set_num_threads(1)

def rel(a, b):
    return ((a - b).norm() / b.norm().clamp_min(1e-300)).item()

def randomize(model, scale=0.3):
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "norm" in n or n.endswith("residual"):
                p.copy_(1 + scale * torch.randn_like(p))
            elif n.endswith("bias"):
                p.copy_(0.1 * torch.randn_like(p))
    return model

def check(label, value, tol=1e-6):
    ok = value < tol
    print(f"{'OK  ' if ok else 'FAIL'} {label}: rel={value:.3e} (tol {tol:g})", flush=True)
    return ok

def expect_error(label, fn):
    try:
        r = fn()
        print(f"FAIL {label}: no error raised (conversion succeeded silently)", flush=True)
        return r
    except ValueError as e:
        print(f"OK   {label}: ValueError: {e}", flush=True)
    except Exception as e:
        print(f"FAIL {label}: {type(e).__name__} (not ValueError): {str(e).splitlines()[0][:300]}", flush=True)

def save_reload(model):
    from transformers import AutoModelForCausalLM
    import wonderful_matrices  # registers Auto classes
    d = tempfile.mkdtemp(dir="/tmp/audit_convert")
    model.save_pretrained(d)
    return AutoModelForCausalLM.from_pretrained(d, dtype=next(model.parameters()).dtype).eval(), d
