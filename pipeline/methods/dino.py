"""DINO (Caron et al., 2021): self-distillation without labels. A student (encoder + prototype head) matches the
softmax of a teacher over ``method.out_dim`` prototypes; the teacher is the student's EMA (``methods/ema.py``, as
BYOL's target), its outputs centred (an EMA of their mean over every rank's batch) and sharpened (a temperature
below the student's, warmed up from ``warmup_teacher_temp``), which keeps it from collapsing. The prototypes (the
head's last layer) stay fixed for the first ``freeze_last_layer`` share of the steps. Schedules follow the global
step and live in buffers, so a resumed run continues them exactly; only the student encoder is evaluated and
exported.

Two global views per image (``augment.preset``); multi-crop's small local views are not made yet.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, ClassVar

import torch
from annotated_types import Gt, Interval
from torch import nn

from pipeline.losses.self_distillation import dino_loss, updated_center
from pipeline.methods.base import Method, MethodOptions
from pipeline.methods.ema import follow, follower_of
from pipeline.models import EncoderSpec, ModelConfig, build_encoder
from pipeline.models.heads import PrototypeHead
from pipeline.schedules import ema_momentum


@dataclass
class DINOOptions(MethodOptions):
    name: ClassVar[str] = "dino"
    out_dim: Annotated[int, Gt(0), "prototypes the head maps onto (the paper: 65,536)"] = 4096
    student_temp: Annotated[float, Gt(0), "the student's softmax temperature"] = 0.1
    teacher_temp: Annotated[
        float, Gt(0), "the teacher's temperature after its warm-up (sharper than the student's)"
    ] = 0.04
    warmup_teacher_temp: Annotated[float, Gt(0), "the teacher's temperature at step 0"] = 0.04
    teacher_temp_warmup: Annotated[float, Interval(ge=0, le=1), "share of the steps the warm-up takes (linear)"] = 0.3
    center_momentum: Annotated[float, Interval(ge=0, lt=1), "EMA of the teacher outputs' mean that centres them"] = 0.9
    ema_base: Annotated[float, Interval(ge=0, lt=1), "teacher momentum at step 0, rising to 1 on a cosine"] = 0.996
    freeze_last_layer: Annotated[
        float, Interval(ge=0, le=1), "share of the steps during which the prototypes stay fixed (the paper: 1 epoch)"
    ] = 0.01


class DINO(Method):
    Options = DINOOptions
    model_keys = ("head_hidden", "head_dim")
    needs_augmentation = True  # identical views make the distillation trivial

    def __init__(self, options: DINOOptions, spec: EncoderSpec, model: ModelConfig) -> None:
        super().__init__(spec)
        self.encoder, dim = build_encoder(spec)
        self.head = PrototypeHead(dim, model.head_hidden, model.head_dim, options.out_dim)
        self.teacher = follower_of(self.encoder, self.head)
        self.options = options
        self.register_buffer("center", torch.zeros(options.out_dim))
        self.register_buffer("teacher_temp", torch.tensor(options.warmup_teacher_temp))
        self.register_buffer("frozen", torch.tensor(options.freeze_last_layer > 0))
        self.tau = options.ema_base
        prototypes = self.head.last.parametrizations.weight.original1  # (the norms, original0, are fixed)
        prototypes.register_hook(lambda grad: grad * (~self.frozen))  # no sync: a multiply on the device

    def forward(self, *views: torch.Tensor) -> torch.Tensor:
        """Views ``(B, C, H, W)`` (global ones) -> scalar loss; the centre moves towards this step's teacher."""
        student = torch.stack([self.head(self.encoder(view)) for view in views])
        with torch.no_grad():
            teacher = torch.stack([self.teacher(view) for view in views])
        loss = dino_loss(student, teacher, self.center, self.options.student_temp, self.teacher_temp)
        if self.training:
            self.center.copy_(updated_center(self.center, teacher, self.options.center_momentum))
        return loss

    def momentum_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        """``(student, teacher)`` modules: the teacher's encoder and head follow the student's."""
        return [(self.encoder, self.teacher[0]), (self.head, self.teacher[1])]

    def after_step(self, step: int, total_steps: int) -> None:
        """The teacher follows the student; the schedules move to ``step``'s values."""
        self.tau = ema_momentum(step, total_steps, self.options.ema_base)
        follow(self.momentum_pairs(), self.tau)
        options, progress = self.options, step / max(1, total_steps)
        warm = min(1.0, progress / options.teacher_temp_warmup) if options.teacher_temp_warmup else 1.0
        self.teacher_temp.fill_(
            options.warmup_teacher_temp + warm * (options.teacher_temp - options.warmup_teacher_temp)
        )
        self.frozen.fill_(progress < options.freeze_last_layer)

    def epoch_metrics(self, total: Callable[[torch.Tensor], torch.Tensor]) -> dict[str, float]:
        """``ema_tau`` and ``teacher_temp`` after the epoch's last step (the same on every rank)."""
        return {"ema_tau": self.tau, "teacher_temp": float(self.teacher_temp)}
