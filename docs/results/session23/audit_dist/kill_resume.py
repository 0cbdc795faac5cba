"""kill_resume.py OUT NPROC_FIRST NPROC_RESUME [extra wm train flags...]
Start `wm train` (torchrun when NPROC>1), SIGKILL the whole process group once checkpoint-4 exists,
then re-run the same command with NPROC_RESUME processes; print both exit codes and stderr tails."""
import contextlib, os, signal, subprocess, sys, time
from pathlib import Path
out, n1, n2, extra = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4:]
W = "/work/main/.venv/bin"
COMMON = ("--seq-len 32 --lr 3e-3 --eval-interval 3 --eval-rows 8 --log-interval 1 --warmup 0.25 --device cpu "
          "--no-progress --threads 1").split()
def argv(n):
    base = ["train", "--out", out, *extra, *COMMON]
    if n == 1:
        return [f"{W}/python", "-m", "wonderful_matrices.cli", *base]
    return [f"{W}/python", "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(n),
            "-m", "wonderful_matrices.cli", *base]
env = dict(os.environ, OMP_NUM_THREADS="1")
p = subprocess.Popen(argv(n1), env=env, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
deadline = time.time() + 100
while not (Path(out) / "checkpoint-4").exists() and p.poll() is None and time.time() < deadline:
    time.sleep(0.005)
def descendants(pid):
    kids = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                ppid = int(open(f"/proc/{d}/stat").read().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
            if ppid == pid:
                kids.append(int(d))
    return kids + [g for k in kids for g in descendants(k)]
victims = [p.pid] + descendants(p.pid)
for v in victims:  # the launcher and the ranks it started (each rank may sit in its own session)
    with contextlib.suppress(ProcessLookupError):  # already gone
        os.kill(v, signal.SIGKILL)
p.wait()
time.sleep(0.5)
print("killed", victims)
print("first run rc", p.returncode, "checkpoints:", sorted(x.name for x in Path(out).iterdir()))
q = subprocess.run(argv(n2), env=env, capture_output=True, text=True, timeout=110)
print("resume rc", q.returncode)
print("resume stderr tail:\n" + "\n".join((q.stderr + q.stdout).splitlines()[-8:]))
