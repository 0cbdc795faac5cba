"""The record of a run (``run_config.json``) and the rule for what a resumed run may change.

``run_config.json`` holds ``{"facts", "config", "schedule"}``: the settings the run's data depend on
(``facts``: preset, corpus, tokenizer, row length, batch shape, seed), every flag it runs with (``config``) and
the learning-rate plan in steps (``schedule``: ``max_steps``, ``warmup_steps``, ``decay_steps``). It is
rewritten at each start, after every check has passed, so it always describes what runs.

Resuming (the folder has a checkpoint):

* the facts and the optimisation settings (:data:`TRAJECTORY`: peak and final learning rate, schedule kind,
  warm-up and decay fractions, weight decay, clipping, document masking) must be the ones the run was started
  with: a change would silently give another trajectory, so it is refused, naming the flag, the old and the
  new value;
* ``--max-steps`` may change. The warm-up keeps its length in steps fixed at the first start (it never
  re-warms), and the decay (``wsd``) or the cosine is re-planned over the new total; the change is reported;
* everything else (intervals, devices, threads, compilation, CUDA graphs, progress bar) is free.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from ..atomic import atomic_write_text
from ..errors import UserError

RUN_CONFIG = "run_config.json"
TRAJECTORY = ("lr", "min_lr_ratio", "schedule", "warmup", "decay", "weight_decay", "clip", "document_mask")


def read_run_config(run_dir: Path) -> dict | None:
    """The record of the run in ``run_dir`` (None: there is none); ``UserError`` when it is not readable."""
    path = run_dir / RUN_CONFIG
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_bytes())
        if not (isinstance(record, dict) and isinstance(record.get("facts"), dict)
                and isinstance(record.get("config"), dict)):
            raise ValueError("not a run record")
    except (OSError, ValueError) as e:
        raise UserError(f"{path} is damaged ({type(e).__name__}: {str(e).splitlines()[0][:80] if str(e) else ''}); "
                        "restore it, or pass another --out") from None
    return record


def plan_schedule(cfg, previous: dict | None, resuming: bool, say: Callable[[str], None]) -> dict:
    """The learning-rate plan of ``cfg`` (a ``TrainConfig``): ``{"max_steps", "warmup_steps", "decay_steps"}``.

    ``previous`` is the run's record (or None), ``resuming`` whether a checkpoint is continued. Raises
    ``UserError`` for a change the rule (module docstring) refuses; ``say`` reports a re-planned schedule.
    """
    if previous is not None:
        before = previous["config"]
        changed = [(k, v) for k, v in cfg.run_facts().items() if previous["facts"].get(k) != v]
        if changed:
            key, value = changed[0]
            raise UserError(f"{cfg.out} holds a run with {key}={previous['facts'].get(key)!r} (now {value!r}); "
                            "re-run the same command to resume, or pass another --out")
        if resuming:
            for key in TRAJECTORY:
                if key in before and before[key] != getattr(cfg, key):
                    flag = "--" + key.replace("_", "-")
                    raise UserError(f"{flag}: the run in {cfg.out} was trained with {before[key]!r}, now "
                                    f"{getattr(cfg, key)!r}; a resumed run keeps its optimisation settings (drop "
                                    f"{flag} or pass {before[key]!r}), or start a new run with another --out")
    warmup_steps = int(round(cfg.warmup * cfg.max_steps))
    old_plan = _previous_plan(previous) if resuming else None
    if old_plan is not None:
        warmup_steps = min(old_plan["warmup_steps"], cfg.max_steps)
    decay_steps = (min(int(round(cfg.decay * cfg.max_steps)), cfg.max_steps - warmup_steps) if cfg.schedule == "wsd"
                   else 0)
    plan = {"max_steps": cfg.max_steps, "warmup_steps": warmup_steps, "decay_steps": decay_steps}
    if old_plan is not None and old_plan["max_steps"] != cfg.max_steps:
        what = (f"the decay re-planned over steps {cfg.max_steps - decay_steps + 1}-{cfg.max_steps}" if decay_steps
                else f"the {cfg.schedule} schedule re-planned to end at step {cfg.max_steps}")
        say(f"--max-steps {old_plan.get('max_steps')} -> {cfg.max_steps}: the warm-up stays {warmup_steps} steps, "
            f"{what}")
    return plan


def _previous_plan(previous: dict | None) -> dict | None:
    """The plan a record holds (a record written before plans were kept: the one its flags gave)."""
    if previous is None:
        return None
    plan, config = previous.get("schedule"), previous["config"]
    if isinstance(plan, dict) and isinstance(plan.get("warmup_steps"), int) and isinstance(plan.get("max_steps"), int):
        return plan
    try:
        return {"max_steps": int(config["max_steps"]),
                "warmup_steps": int(round(config["warmup"] * config["max_steps"]))}
    except (KeyError, TypeError, ValueError):
        return None


def write_run_config(run_dir: Path, cfg, plan: dict) -> None:
    """Record what runs in ``run_dir/run_config.json`` (atomically)."""
    config = {k: v for k, v in vars(cfg).items() if k != "preset"}
    atomic_write_text(run_dir / RUN_CONFIG, json.dumps({"facts": cfg.run_facts(), "config": config,
                                                        "schedule": plan}, indent=1, default=str))
