#!/usr/bin/env bash
set -uo pipefail
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1 TRITON_CACHE_DIR=$PWD/.triton_cache
END=${END:-395}
left() { local l=$((END - SECONDS)); [ $l -lt $1 ] && echo $l || echo $1; }
nvidia-smi --query-gpu=name --format=csv,noheader
timeout $(left 110) python3 -m pytest -n 8 -p no:cacheprovider -rfE -q tests/ops/test_ssd_cuda.py > $OUT/cuda_ssd.log 2>&1; echo "ssd rc $? at $SECONDS"; tail -6 $OUT/cuda_ssd.log
timeout $(left 90) python3 - $OUT/throughput.json > $OUT/throughput.log 2>&1 <<'PY'
import json, sys, torch
from wonderful_matrices.bench.lm import training_throughput
from wonderful_matrices.models import presets
dev, rows = torch.device("cuda"), []
for seq_len in (4096, 16384):
    for name in ("cheems-base", "llama-base"):
        r = training_throughput(presets.get(name, use_cache=False), seq_len, 32768, dev, steps=5)
        rows.append({"preset": name, "seq_len": seq_len, **r}); print(rows[-1], flush=True)
        json.dump({"device": torch.cuda.get_device_name(0), "rows": rows}, open(sys.argv[1], "w"), indent=1)
PY
echo "throughput at $SECONDS"; grep -oE "'preset': '[a-z-]+', 'seq_len': [0-9]+, 'tokens_per_s': [0-9.]+" $OUT/throughput.log
timeout $(left 100) python3 -m pytest -n 8 -p no:cacheprovider -rfE -q tests/ops/test_experts_cuda.py tests/ops/test_product_key_triton_compile.py tests/layers/test_cdmoe_layer.py > $OUT/cuda_experts.log 2>&1; echo "experts rc $? at $SECONDS"; tail -6 $OUT/cuda_experts.log
timeout $(left 30) python3 scripts/topk_bench.py > $OUT/topk.log 2>&1; echo "topk at $SECONDS"; tail -8 $OUT/topk.log
timeout $(left 200) python3 -m pytest -n 8 -p no:cacheprovider -rfE -q tests/ops/test_dma_select.py tests/ops/test_dma_cuda.py tests/models/test_models_cuda.py -k "select or fused_decoding_kernels or step_inputs or never_syncs or generate_replays or live_keys" > $OUT/cuda_new.log 2>&1; echo "new rc $? at $SECONDS"; tail -12 $OUT/cuda_new.log
