import math

import pytest
import torch

from pipeline.losses import byol_loss
from pipeline.methods import build_method
from pipeline.methods.byol import BYOLOptions
from pipeline.methods.ema import follow
from pipeline.models import EncoderSpec, ModelConfig
from pipeline.optim import OptimConfig, build_optimizer
from pipeline.schedules import ema_momentum


def test_loss_hand_computed():
    p = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    z = torch.tensor([[3.0, 0.0], [0.0, -1.0], [1.0, 0.0]])
    # cosines 1, -1, 1/sqrt(2): losses 0, 4, 2 - sqrt(2)
    assert byol_loss(p, z).item() == pytest.approx((0 + 4 + 2 - math.sqrt(2)) / 3)
    assert byol_loss(z, z).item() == pytest.approx(0.0, abs=1e-7)  # identical views: zero loss


def test_momentum_schedule():
    assert ema_momentum(0, 100, 0.99) == pytest.approx(0.99)
    assert ema_momentum(50, 100, 0.99) == pytest.approx(0.995)
    assert ema_momentum(100, 100, 0.99) == pytest.approx(1.0)
    assert ema_momentum(25, 100, 0.996) == pytest.approx(1 - 0.004 * (math.cos(math.pi / 4) + 1) / 2)


def _byol():
    options = BYOLOptions()
    spec = EncoderSpec("small_cnn", 1, 28, (0.5,), (0.25,), width=4, embed_dim=8)
    return options, build_method(options, spec, ModelConfig(head_hidden=32, head_dim=16))


def test_target_is_outside_the_optimizer_and_follows_the_ema():
    torch.manual_seed(0)
    options, method = _byol()
    optimizer = build_optimizer(method, OptimConfig(), 256)
    optimized = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert not optimized & {id(p) for p in method.target.parameters()}
    assert all(not p.requires_grad for p in method.target.parameters())

    target_before = [p.clone() for p in method.target.parameters()]
    loss = method(torch.rand(8, 1, 28, 28), torch.rand(8, 1, 28, 28))
    loss.backward()
    assert all(p.grad is None for p in method.target.parameters())
    optimizer.step()
    assert all(
        torch.equal(a, b) for a, b in zip(target_before, method.target.parameters(), strict=True)
    )  # optimizer: no touch

    method.after_step(3, 10)
    tau = ema_momentum(3, 10, options.ema_base)
    online = [*method.encoder.parameters(), *method.projector.parameters()]
    for before, after, source in zip(target_before, method.target.parameters(), online, strict=True):
        torch.testing.assert_close(after, tau * before + (1 - tau) * source)


def test_the_target_follows_in_one_fused_update(monkeypatch):
    """Every target parameter moves in one ``torch._foreach_lerp_`` call (not a kernel or more per parameter)."""
    calls = []
    lerp = torch._foreach_lerp_
    monkeypatch.setattr(
        torch, "_foreach_lerp_", lambda followers, *rest: calls.append(len(followers)) or lerp(followers, *rest)
    )
    _, method = _byol()
    method.after_step(3, 10)
    assert calls == [len(list(method.target.parameters()))]


def test_momentum_pairs_of_different_structure_are_refused():
    with pytest.raises(ValueError, match="momentum pairs differ"):
        follow([(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2, bias=False))], 0.5)
