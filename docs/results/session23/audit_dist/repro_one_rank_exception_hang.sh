# An exception on one rank only (injected RuntimeError, or a NaN loss on that rank's shard) hangs the whole job:
# the failing rank waits in shutdown()'s barrier, the other in the next collective; no error is printed.
cd /tmp/dist_audit
DUMP_AFTER=25 T=40 bash inj.sh crash 1 3 inj_crash1_stacks     # stacks of both ranks in runs/inj_crash1_stacks.log
T=40 bash inj.sh nanbwd 1 3 inj_nanbwd1
