"""DINO's self-distillation loss and its teacher centre (Caron et al., 2021)."""

from __future__ import annotations

import torch

from pipeline.distributed import sum_across_ranks, world
from pipeline.losses.precision import in_float32


@in_float32
def dino_loss(
    student: torch.Tensor, teacher: torch.Tensor, center: torch.Tensor, student_temp: float, teacher_temp: float
) -> torch.Tensor:
    """Cross-entropy between the centred, sharpened teacher and the student, over every pair of different views.

    For student outputs ``s (V, B, K)`` (the global views first, then the local ones) and teacher outputs
    ``t (G, B, K)`` of the ``G`` global views, with ``P_t = softmax((t - c) / teacher_temp)`` (``c``: ``center``
    ``(K,)``, no gradient) and ``log P_s = log_softmax(s / student_temp)``:

        L = 1 / (B * #pairs) * sum_{g < G} sum_{v < V, v != g} sum_b -P_t[g, b] . log P_s[v, b]

    ``#pairs = G (V - 1)``: a view is never matched with itself. The teacher's tensor is detached here."""
    targets = torch.softmax((teacher.detach() - center) / teacher_temp, dim=-1)  # (G, B, K)
    log_students = torch.log_softmax(student / student_temp, dim=-1)  # (V, B, K)
    cross = -torch.einsum("gbk,vbk->gv", targets, log_students) / student.shape[1]  # (G, V): mean over the batch
    same = torch.eye(teacher.shape[0], student.shape[0], dtype=torch.bool, device=cross.device)
    return cross.masked_fill(same, 0).sum() / (teacher.shape[0] * (student.shape[0] - 1))


@torch.no_grad()
def updated_center(center: torch.Tensor, teacher: torch.Tensor, momentum: float) -> torch.Tensor:
    """``m c + (1 - m) mean(t)``: the teacher centre moved towards the mean of this step's teacher outputs
    ``t (G, B, K)`` over every view and image of every rank (one all-reduce of a ``(K,)`` sum and a count)."""
    total = sum_across_ranks(teacher.float().sum(dim=(0, 1)))
    count = teacher.shape[0] * teacher.shape[1] * world()[1]  # every rank has the same batch
    return center * momentum + total / count * (1 - momentum)
