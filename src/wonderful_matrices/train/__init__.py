"""Training: the resumable loop, schedules, crash-safe checkpoints, multi-process helpers, evaluation."""
from .checkpoint import latest_checkpoint, load_model, save_checkpoint
from .evaluate import evaluate, unigram_perplexity
from .loop import TrainConfig, build_model, train
from .schedule import lr_multiplier

__all__ = ["latest_checkpoint", "load_model", "save_checkpoint", "evaluate", "unigram_perplexity", "TrainConfig",
           "build_model", "train", "lr_multiplier"]
