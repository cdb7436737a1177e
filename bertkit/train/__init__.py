"""Training machinery shared by pre-training and fine-tuning: the loop, optimizers, checkpoints, torchrun,
tracking. See `trainer.py` for the objective protocol the loop trains."""
from . import distributed
from .checkpoint import find_latest, load_checkpoint, save_checkpoint
from .optim import Lamb, build_optimizer, linear_schedule, param_groups
from .tracking import Tracker, plot_run, plot_runs, read_metrics
from .trainer import TrainConfig, Trainer

__all__ = ["Lamb", "TrainConfig", "Trainer", "Tracker", "build_optimizer", "distributed", "find_latest",
           "linear_schedule", "load_checkpoint", "param_groups", "plot_run", "plot_runs", "read_metrics",
           "save_checkpoint"]
