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


def _conv_net() -> torch.nn.Module:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.Conv2d(8, 4, 1))
    return net.to(memory_format=torch.channels_last)


def _backward(net: torch.nn.Module, seed: int) -> None:
    torch.manual_seed(seed)
    net.zero_grad()
    net(torch.rand(2, 3, 8, 8)).square().mean().backward()


def test_lars_matches_the_update_written_per_parameter_and_keeps_its_buffers(monkeypatch):
    """Two fused LARS steps (lr 0.1, momentum 0.9, wd 1e-4, eta 0.02) against its docstring's update written out
    per parameter; the momentum buffers are made once (``setdefault`` allocated and zeroed new ones every step)."""
    net, reference = _conv_net(), _conv_net()
    optimizer = LARS(parameter_groups(net, 1e-4), lr=0.1, momentum=0.9, eta=0.02)
    velocity = {p: torch.zeros_like(p) for p in reference.parameters()}
    buffers = None
    for seed in (1, 2):
        _backward(net, seed)
        optimizer.step()
        buffers = buffers or [optimizer.state[p]["momentum_buffer"] for p in net.parameters()]
        _backward(reference, seed)
        with torch.no_grad():
            for p in reference.parameters():
                if p.ndim > 1:  # conv weights; biases and BatchNorm take plain momentum SGD
                    trust = 0.02 * p.norm() / (p.grad.norm() + 1e-4 * p.norm())
                    velocity[p] = 0.9 * velocity[p] + trust * (p.grad + 1e-4 * p)
                else:
                    velocity[p] = 0.9 * velocity[p] + p.grad
                p -= 0.1 * velocity[p]
        for mine, theirs in zip(net.parameters(), reference.parameters(), strict=True):
            torch.testing.assert_close(mine, theirs)
    allocated = []
    monkeypatch.setattr(torch, "zeros_like", lambda *args, **kwargs: allocated.append(args) or torch.zeros(0))
    _backward(net, 3)
    optimizer.step()
    assert not allocated
    assert all(optimizer.state[p]["momentum_buffer"] is b for p, b in zip(net.parameters(), buffers, strict=True))


def test_lars_trust_factors_share_each_gradients_size_and_strides(monkeypatch):
    """The fused (CUDA) path of ``torch._foreach_mul_`` takes lists whose tensors match one by one in size and
    strides: the trust factors come as such tensors (channels_last convolution weights included), not as 0-d."""
    seen = []
    multiply = torch._foreach_mul_

    def record(tensors, others):
        if isinstance(others, list):
            seen.extend((t.size(), t.stride(), o.size(), o.stride()) for t, o in zip(tensors, others, strict=True))
        return multiply(tensors, others)

    monkeypatch.setattr(torch, "_foreach_mul_", record)
    net = _conv_net()
    _backward(net, 0)
    LARS(parameter_groups(net, 1e-4), lr=0.1, eta=0.02).step()
    assert len(seen) == 2 and any(stride != torch.empty(size).stride() for size, stride, _, _ in seen)
    assert all(size == other_size and stride == other_stride for size, stride, other_size, other_stride in seen)
