# Kill a run after checkpoint-4, resume with another number of processes and the same flags: accepted silently; the
# global batch changes and rows are repeated (2->1) or skipped (1->2) (resume_ws_rows.py). Resuming with the same
# global batch (2 ranks x 2 -> 1 x 4) is refused instead.
cd /tmp/dist_audit; . ./common.sh; rm -rf runs/kr_2to1 runs/kr_1to2 runs/ws_comp
$W/python kill_resume.py runs/kr_2to1 2 1 --preset preset-cheems-tiny-nobal --data corpus.txt --max-steps 12 --batch-size 2 --save-interval 2
$W/python kill_resume.py runs/kr_1to2 1 2 --preset preset-cheems-tiny-nobal --data corpus.txt --max-steps 12 --batch-size 2 --save-interval 2
grep -h '"step": [45],' runs/kr_2to1/metrics.jsonl | grep train     # "tokens" goes 512 -> 320
$W/python resume_ws_rows.py
[ -d runs/d2_12 ] || tr2 --preset preset-cheems-tiny-nobal --data corpus.txt --out runs/d2_12 --max-steps 12 --batch-size 2 --save-interval 2 2>/dev/null
cp -r runs/d2_12 runs/ws_comp; rm -rf runs/ws_comp/checkpoint-12 runs/ws_comp/summary.json; echo checkpoint-10 > runs/ws_comp/latest
tr1 --preset preset-cheems-tiny-nobal --data corpus.txt --out runs/ws_comp --max-steps 12 --batch-size 4 --save-interval 2 2>&1 | tail -1
