"""DINO's loss against values computed by hand; its centre across two processes equals one process's."""

import math

import pytest
import torch
import torch.distributed as dist

from pipeline.losses.self_distillation import dino_loss, updated_center
from tests.processes import gloo_ranks


def test_the_loss_pairs_each_teacher_view_with_every_other_student_view_by_hand():
    """One image, K=2, 2 global views and 1 local; teacher_temp 1, student_temp 1, centre (0, 0)."""
    teacher = torch.tensor([[[0.0, 0.0]], [[math.log(3), 0.0]]])  # P_t: (1/2, 1/2) and (3/4, 1/4)
    student = torch.tensor([[[0.0, 0.0]], [[0.0, math.log(3)]], [[math.log(3), 0.0]]])
    log_p = [torch.log_softmax(s[0], -1) for s in student]  # (1/2, 1/2), (1/4, 3/4), (3/4, 1/4)
    targets = [torch.tensor([0.5, 0.5]), torch.tensor([0.75, 0.25])]
    pairs = [(0, 1), (0, 2), (1, 0), (1, 2)]  # (teacher view, student view), never a view with itself
    by_hand = sum(-(targets[g] * log_p[v]).sum() for g, v in pairs) / 4
    assert dino_loss(student, teacher, torch.zeros(2), 1.0, 1.0).item() == pytest.approx(by_hand.item(), rel=1e-6)


def test_centring_and_sharpening_act_on_the_teacher_only():
    torch.manual_seed(0)
    student, teacher = torch.randn(4, 8, 5, requires_grad=True), torch.randn(2, 8, 5)
    shift = torch.tensor([3.0, -1.0, 0.5, 2.0, 0.0])
    base = dino_loss(student, teacher, torch.zeros(5), 0.1, 0.04)
    # centring by c equals subtracting c from the teacher's outputs; a constant centre changes nothing
    assert dino_loss(student, teacher + shift, shift, 0.1, 0.04).item() == pytest.approx(base.item(), rel=1e-5)
    assert dino_loss(student, teacher, torch.full((5,), 7.0), 0.1, 0.04).item() == pytest.approx(base.item(), rel=1e-5)
    base.backward()
    assert student.grad.abs().sum() > 0  # the student learns; the teacher's tensor never needs a gradient


def test_the_centre_follows_the_mean_teacher_output():
    teacher = torch.tensor([[[1.0, 3.0], [3.0, 5.0]], [[2.0, 0.0], [2.0, 4.0]]])  # mean over views and images (2, 3)
    torch.testing.assert_close(updated_center(torch.tensor([10.0, 10.0]), teacher, 0.9), torch.tensor([9.2, 9.3]))


def _rank_center():
    rank = dist.get_rank()
    teacher = torch.arange(2 * 4 * 3, dtype=torch.float32).reshape(2, 4, 3) ** 1.5
    return updated_center(torch.ones(3), teacher[:, rank * 2 : (rank + 1) * 2], 0.8).numpy().copy()


@pytest.mark.slow  # processes of their own
def test_two_ranks_centre_as_one_process_on_the_global_batch():
    teacher = torch.arange(2 * 4 * 3, dtype=torch.float32).reshape(2, 4, 3) ** 1.5
    expected = updated_center(torch.ones(3), teacher, 0.8)
    for center in gloo_ranks(_rank_center):
        torch.testing.assert_close(torch.from_numpy(center), expected)
