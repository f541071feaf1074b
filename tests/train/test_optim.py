import math

import pytest
import torch

from pipeline.optim import LARS, OptimConfig, build_optimizer, parameter_groups
from pipeline.schedules import warmup_cosine


def test_no_decay_for_batchnorm_and_bias():
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten(), torch.nn.Linear(4, 2)
    )
    decay, no_decay = parameter_groups(model, 0.1)
    assert [p.shape for p in decay["params"]] == [(4, 1, 3, 3), (2, 4)]
    assert len(no_decay["params"]) == 4 and no_decay["weight_decay"] == 0.0  # conv bias, BN weight+bias, fc bias


def test_lr_scales_with_global_batch():
    model = torch.nn.Linear(2, 2)
    optimizer = build_optimizer(model, OptimConfig(name="adamw", lr=0.1), global_batch=512)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.2)


def test_lars_step_hand_computed():
    w = torch.nn.Parameter(torch.tensor([3.0, 4.0]))  # ||w|| = 5
    w.grad = torch.tensor([0.0, 1.0])
    optimizer = LARS([{"params": [w]}], lr=1.0, momentum=0.9, weight_decay=0.0, eta=0.01)
    optimizer.step()
    # trust ratio = eta * ||w|| / ||g|| = 0.01 * 5 / 1 = 0.05
    torch.testing.assert_close(w.detach(), torch.tensor([3.0, 3.95]))


def test_warmup_cosine_values():
    assert warmup_cosine(0, 100, 10) == pytest.approx(0.1)
    assert warmup_cosine(9, 100, 10) == pytest.approx(1.0)
    assert warmup_cosine(10, 100, 10) == pytest.approx(1.0)
    assert warmup_cosine(55, 100, 10) == pytest.approx(0.5)
    assert warmup_cosine(100, 100, 10) == pytest.approx(0.0)
    assert warmup_cosine(32, 100, 10) == pytest.approx(0.5 * (1 + math.cos(math.pi * 22 / 90)))


def test_lars_step_with_weight_decay_follows_its_docstring():
    """The trust ratio of You et al. (2017): eta ||w|| / (||g|| + wd ||w||), applied to g + wd w."""
    w = torch.nn.Parameter(torch.tensor([3.0, 4.0]))  # ||w|| = 5
    w.grad = torch.tensor([0.0, 2.0])  # ||g|| = 2
    optimizer = LARS([{"params": [w]}], lr=1.0, momentum=0.9, weight_decay=0.1, eta=0.01)
    optimizer.step()
    trust = 0.01 * 5 / (2 + 0.1 * 5)  # 0.02; eta ||w|| / ||g + wd w|| would be 0.0207
    expected = torch.tensor([3.0, 4.0]) - trust * torch.tensor([0.0 + 0.1 * 3.0, 2.0 + 0.1 * 4.0])
    torch.testing.assert_close(w.detach(), expected)
