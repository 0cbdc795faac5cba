# Every target creates .venv from nothing when it is missing, so a fresh clone needs only `make demo` / `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# The oldest supported transformers (requirements-oldest.lock), installed into a folder that goes in front of .venv's
# packages on PYTHONPATH: the model tests run a second time against it without a second torch.
OLDEST := .venv-oldest
OLDEST_STAMP := $(OLDEST)/.installed
# pytest-xdist workers of `make test`: the suite is mostly single-threaded (Triton-interpreter children, small CPU
# steps), so the CI machine's two cores run it in about half the time of one process (10.7 against 19.5 minutes).
TEST_WORKERS ?= 2

.PHONY: demo test venv clean

$(STAMP): pyproject.toml requirements.lock
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.lock
	$(PY) -m pip install -q --no-deps -e .
	touch $(STAMP)

$(OLDEST_STAMP): requirements-oldest.lock $(STAMP)
	rm -rf $(OLDEST)
	$(PY) -m pip install -q --no-deps --target $(OLDEST) -r requirements-oldest.lock
	touch $(OLDEST_STAMP)

venv: $(STAMP)

test: $(STAMP) $(OLDEST_STAMP)
	$(VENV)/bin/ruff check src tests scripts
	$(PY) -m pytest -q -n $(TEST_WORKERS) --durations=15 tests
	@echo "== tests/models again with the oldest supported transformers"
	PYTHONPATH=$(OLDEST) $(PY) -c "import transformers; want = '$(shell sed -n 's/^transformers==//p' requirements-oldest.lock)'; \
		assert transformers.__version__ == want, (transformers.__version__, want)"
	@# without the Triton-interpreter children: they check kernels, which do not depend on the transformers version
	PYTHONPATH=$(OLDEST) $(PY) -m pytest -q -n $(TEST_WORKERS) -p no:cacheprovider -k "not interpreted_in_a_subprocess" tests/models

demo: $(STAMP)
	@echo "== training cheems-small on the embedded Shakespeare corpus (re-running resumes; rm -rf runs/demo to restart)"
	@# one torch thread: on a 2-core machine shared with anything else, two threads run several times slower
	$(VENV)/bin/wm train --preset cheems-small --data shakespeare --out runs/demo --max-steps 400 \
		--batch-size 8 --seq-len 128 --lr 3e-3 --warmup 0.05 --decay 0.3 --eval-interval 50 --eval-rows 16 \
		--save-interval 100 --log-interval 10 --threads 1
	@echo "== validation perplexity (128 rows of the held-out plays) and the unigram baseline"
	$(VENV)/bin/wm eval runs/demo --max-rows 128 --threads 1
	@echo "== sample"
	$(VENV)/bin/wm generate runs/demo --prompt "ROMEO:" --max-new-tokens 120 --seed 0 --threads 1
	@echo "== loss plot: runs/demo/loss.png"

clean:
	rm -rf $(VENV) $(OLDEST)
