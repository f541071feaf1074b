"""``train.compile``: a compiled model takes the same steps as the eager one."""

import copy

import pytest
import torch

from pipeline.config import load_config
from pipeline.methods import build_method
from pipeline.models import EncoderSpec
from pipeline.optim import build_optimizer
from pipeline.train import train_step


@pytest.mark.slow
def test_a_compiled_model_takes_the_eager_models_steps():
    config = load_config(
        None, ["model.width=4", "model.embed_dim=8", "model.head_hidden=8", "model.head_dim=4", "train.compile=true"]
    )
    spec = EncoderSpec("small_cnn", 1, 8, (0.5,), (0.25,), width=4, embed_dim=8)
    torch.manual_seed(0)
    eager = build_method(config.method, spec, config.model).to(memory_format=torch.channels_last)
    compiled_method = copy.deepcopy(eager)
    compiled = torch.compile(compiled_method)
    optimizers = [build_optimizer(m, config.optim, 16) for m in (eager, compiled_method)]
    torch.manual_seed(1)
    batches = [[torch.rand(16, 1, 8, 8) for _ in range(2)] for _ in range(3)]
    for views in batches:
        expected = train_step(eager, optimizers[0], views, autocast=False)
        got = train_step(compiled, optimizers[1], views, autocast=False)
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    for a, b in zip(eager.state_dict().values(), compiled_method.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-2, atol=1e-3)  # the plain method holds the trained weights
