"""Training: the resumable loop, schedules, crash-safe checkpoints, multi-process helpers, evaluation, and a
training step replayed from a CUDA graph (for small models)."""
from .checkpoint import latest_checkpoint, load_model, save_checkpoint
from .evaluate import evaluate, unigram_perplexity
from .graph_step import GraphedTrainStep, set_learning_rate
from .loop import TrainConfig, build_model, train
from .schedule import lr_multiplier

__all__ = ["latest_checkpoint", "load_model", "save_checkpoint", "evaluate", "unigram_perplexity", "TrainConfig",
           "build_model", "train", "lr_multiplier", "GraphedTrainStep", "set_learning_rate"]
