"""sigint.py OUT SIG: start a 2-rank DDP `wm train` under torchrun, send SIG (INT or TERM) to torchrun once
checkpoint-4 exists (as Ctrl-C in a terminal would for INT), report exit code, seconds to exit, output tail, and
whether every worker is gone."""
import os, signal, subprocess, sys, time
from pathlib import Path
out, sig = sys.argv[1], getattr(signal, "SIG" + sys.argv[2])
W = "/work/main/.venv/bin"
argv = [f"{W}/python", "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m",
        "wonderful_matrices.cli", "train", "--out", out, "--preset", "preset-cheems-tiny-nobal", "--data", "corpus.txt",
        "--max-steps", "200", "--batch-size", "2", "--save-interval", "2", "--seq-len", "32", "--device", "cpu",
        "--no-progress", "--threads", "1", "--eval-interval", "1000"]
p = subprocess.Popen(argv, env=dict(os.environ, OMP_NUM_THREADS="1"), stdout=subprocess.PIPE,
                     stderr=subprocess.STDOUT, text=True)
while not (Path(out) / "checkpoint-4").exists() and p.poll() is None:
    time.sleep(0.01)
kids = [int(d) for d in os.listdir("/proc") if d.isdigit() and
        open(f"/proc/{d}/stat").read().rsplit(")", 1)[1].split()[1] == str(p.pid)]
t = time.time(); p.send_signal(sig)
try:
    outp, _ = p.communicate(timeout=60)
except subprocess.TimeoutExpired:
    print("torchrun still running after 60 s"); p.kill(); outp, _ = p.communicate()
print(f"rc {p.returncode} after {time.time() - t:.1f} s; workers alive: {[k for k in kids if os.path.exists(f'/proc/{k}')]}")
print("\n".join(outp.splitlines()[-6:]))
print("left:", sorted(x.name for x in Path(out).iterdir()))
