# Every target creates .venv from nothing when it is missing, so a fresh clone needs only `make demo` / `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test venv clean

$(STAMP): pyproject.toml requirements.lock
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.lock
	$(PY) -m pip install -q --no-deps -e .
	touch $(STAMP)

venv: $(STAMP)

test: $(STAMP)
	$(VENV)/bin/ruff check src tests scripts
	$(PY) -m pytest -q tests

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
	rm -rf $(VENV)
