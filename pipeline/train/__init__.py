"""Training on Ray Train: checkpoint I/O (``checkpoint``), the per-worker loop (``loop``) and the driver that
configures ``TorchTrainer`` (``driver``). Nothing here knows of tracking."""

from pipeline.train.driver import fit
from pipeline.train.loop import NonFiniteLoss, steps_in, train_step

__all__ = ["NonFiniteLoss", "fit", "steps_in", "train_step"]
