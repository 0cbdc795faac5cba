set -u
source scripts/gpu_steps.sh
mkdir -p runs/probe && tar xzf tmp_gpu/lm-scale-state.tgz -C runs/probe
P=docs/results/session24/nan_probe.py
for fm in $PROBES; do f=${fm%:*}; m=${fm#*:}
  step ${WANT:-300} probe_${f}_$m python $P $f $m runs/probe/cache $W/probe_${f}_$m.json ${PLR:-1e-3}
done
for f in $W/probe_*.log; do echo "== $f"; grep -v "^step" $f | tail -30; grep "^step" $f | tail -3; done
