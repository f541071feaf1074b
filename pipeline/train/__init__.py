"""Training on Ray Train: the one harness every kind of worker runs (``harness``) with its step (``step``:
``pretraining``'s, ``finetuning``'s), checkpoint I/O (``checkpoint``), where batches become views (``views``), the
progress line (``progress``) and the driver that configures ``TorchTrainer`` (``driver``). Nothing here knows of
tracking."""

from pipeline.train.driver import fit
from pipeline.train.harness import NonFiniteLoss, steps_in, train_step

__all__ = ["NonFiniteLoss", "fit", "steps_in", "train_step"]
