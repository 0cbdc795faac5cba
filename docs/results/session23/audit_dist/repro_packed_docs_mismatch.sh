# 2 ranks x batch 2 (and 1 rank x batch 2 x grad-accum 2) vs 1 rank x batch 4 on a corpus of many short documents:
# the per-step losses drift apart from step 2 (5e-5 rel) and the final weights differ (up to 9.5e-2 rel per tensor);
# on a one-document text file the same comparison matches (1e-7). scored_counts.py shows why: the ranks' halves
# hold different numbers of scored tokens, and each rank's loss is a mean over its own tokens.
cd /tmp/dist_audit; . ./common.sh; P=$W/python
rm -rf runs/s1_docs runs/d2_docs runs/s1_docs_ga runs/d2_docs_ga
tr1 --preset preset-cheems-tiny-nobal --data docs.jsonl --out runs/s1_docs --max-steps 6 --batch-size 4 --save-interval 6 2>/dev/null
tr2 --preset preset-cheems-tiny-nobal --data docs.jsonl --out runs/d2_docs --max-steps 6 --batch-size 2 --save-interval 6 2>/dev/null
tr1 --preset preset-cheems-tiny-nobal --data docs.jsonl --out runs/s1_docs_ga --max-steps 6 --batch-size 2 --grad-accum 2 --save-interval 6 2>/dev/null
tr2 --preset preset-cheems-tiny-nobal --data docs.jsonl --out runs/d2_docs_ga --max-steps 6 --batch-size 1 --grad-accum 2 --save-interval 6 2>/dev/null
for r in d2_docs s1_docs_ga d2_docs_ga; do $P compare.py runs/$r runs/s1_docs; done
$P scored_counts.py runs/s1_docs
