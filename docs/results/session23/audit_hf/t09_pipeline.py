import torch, sys, tempfile
from common import *
from transformers import pipeline, TextStreamer, AutoTokenizer, AutoModelForCausalLM
name = sys.argv[1] if len(sys.argv) > 1 else "cheems-tiny"
tok = tokenizer()
print("tok len", len(tok), tok.eos_token_id, tok.pad_token_id, tok.padding_side)
m = llama_model() if name == "hf-llama" else wm_model(name)
def run(label, f):
    try: print(label, f())
    except Exception as e:
        import traceback; traceback.print_exc(limit=-3); print(label, "ERR", type(e).__name__, str(e)[:400])
run("pipeline", lambda: pipeline("text-generation", model=m, tokenizer=tok)("hello world", max_new_tokens=5, do_sample=False))
run("pipeline batch", lambda: pipeline("text-generation", model=m, tokenizer=tok)(["hello", "the quick brown fox"], max_new_tokens=5, do_sample=False, batch_size=2))
run("pipeline return_full_text=False", lambda: pipeline("text-generation", model=m, tokenizer=tok)("hello", max_new_tokens=5, return_full_text=False))
def stream():
    enc = tok("hello world", return_tensors="pt")
    s = TextStreamer(tok)
    return m.generate(**enc, max_new_tokens=5, streamer=s, do_sample=False).shape
run("streamer", stream)
def stream_beam():
    enc = tok("hello world", return_tensors="pt")
    return m.generate(**enc, max_new_tokens=5, streamer=TextStreamer(tok), num_beams=2).shape
run("streamer+beams (HF refuses)", stream_beam)
def saved_folder():
    d = tempfile.mkdtemp(); m.save_pretrained(d); tok.save_pretrained(d)
    p = pipeline("text-generation", model=d)
    return p("hello", max_new_tokens=4, do_sample=False), type(p.model).__name__
run("pipeline from folder", saved_folder)
def batch_tok_generate():
    tok.padding_side = "left"
    enc = tok(["hello", "the quick brown fox jumps"], return_tensors="pt", padding=True)
    out = m.generate(**enc, max_new_tokens=5, do_sample=False, pad_token_id=tok.pad_token_id)
    single = m.generate(**tok(["hello"], return_tensors="pt"), max_new_tokens=5, do_sample=False)
    return torch.equal(out[0, -5:], single[0, -5:])
run("batch tokenized leftpad", batch_tok_generate)
