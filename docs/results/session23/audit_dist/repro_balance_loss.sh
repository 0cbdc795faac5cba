# Default cheems-tiny (CDMoE balance loss on): 2 ranks x 2 vs 1 x 4 on a one-document file differ by 1.3e-3 in the loss.
cd /tmp/dist_audit; . ./common.sh; rm -rf runs/s1_bal runs/d2_bal
tr1 --preset cheems-tiny --data corpus.txt --out runs/s1_bal --max-steps 6 --batch-size 4 --save-interval 6 2>/dev/null
tr2 --preset cheems-tiny --data corpus.txt --out runs/d2_bal --max-steps 6 --batch-size 2 --save-interval 6 2>/dev/null
$W/python compare.py runs/d2_bal runs/s1_bal
