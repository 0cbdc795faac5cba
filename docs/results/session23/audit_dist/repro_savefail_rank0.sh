# A full disk while rank 0 saves checkpoint-4: rank 0's one-line error is followed by rank 1's gloo traceback.
cd /tmp/dist_audit; T=90 bash inj.sh savefail 0 4 inj_savefail0; grep "wm train\|^\[rank1\]: RuntimeError" runs/inj_savefail0.log
