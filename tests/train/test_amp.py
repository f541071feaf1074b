"""``train.amp``: bf16 autocast where the device computes bf16 natively, and each method's step under CPU autocast
close to its float32 step."""

import copy
import platform
from pathlib import Path

import pytest
import torch

from pipeline.config import load_config
from pipeline.errors import ConfigError
from pipeline.methods import METHODS, build_method
from pipeline.models import EncoderSpec
from pipeline.optim import build_optimizer
from pipeline.train import train_step
from pipeline.train.amp import autocast_wanted, group_autocast, native_bf16
from tests.helpers import TINY_MAE, names_an_encoder
from tests.processes import gloo_ranks

CPU = torch.device("cpu")
METHOD_OVERRIDES = {
    "simclr": [],
    "byol": ["method.name=byol"],
    "autoencoder": ["method.name=autoencoder", "augment.preset=none", "method.bottleneck=8"],
    "sparse-autoencoder": [
        "method.name=autoencoder",
        "augment.preset=none",
        "method.bottleneck=8",
        "method.sparsity=kl",  # its KL penalty at codes near 1 (a sigmoid of bf16 rounds to 1.0)
    ],
    "vae": ["method.name=vae", "augment.preset=none", "method.bottleneck=8"],
    "mae": TINY_MAE,
    "dino": ["method.name=dino", "method.out_dim=64", "model.head_dim=16"],
}


def _cpu_flags() -> set[str]:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


@pytest.mark.skipif(
    platform.machine() != "x86_64" or not Path("/proc/cpuinfo").exists(), reason="reads x86 flags in /proc/cpuinfo"
)
def test_auto_follows_the_cpus_own_bf16_instructions():
    native = bool({"avx512_bf16", "amx_bf16"} & _cpu_flags())  # what the kernel says the CPU has
    assert native_bf16(CPU) is native
    assert autocast_wanted("auto", CPU) is native
    assert autocast_wanted(True, CPU) is True and autocast_wanted(False, CPU) is False  # forced either way


def _rank_autocast(wanted: list[bool]) -> bool:
    """On a rank of a gloo group: the group's decision when this rank's ``train.amp`` is ``wanted[rank]``."""
    return group_autocast(wanted[torch.distributed.get_rank()], CPU)


@pytest.mark.slow
def test_the_ranks_train_in_bf16_only_if_every_rank_can():
    # one rank without: float32 on both (both with: the shared 2-worker run, tests/test_pretrain.py)
    assert gloo_ranks(_rank_autocast, [True, False]) == [False, False]


def test_train_amp_takes_auto_true_or_false():
    assert load_config(None, []).train.amp == "auto"
    assert load_config(None, ["train.amp=true"]).train.amp is True
    assert load_config(None, ["train.amp=false"]).train.amp is False
    for wrong in ("1", "bf16"):
        with pytest.raises(ConfigError, match=r"train.amp: .*; choose one of auto, true, false"):
            load_config(None, [f"train.amp={wrong}"])


@pytest.mark.parametrize("name", METHOD_OVERRIDES)
def test_a_bf16_step_on_the_cpu_follows_the_float32_step(name):
    """One optimizer step of the method under CPU bf16 autocast against the same step in float32, from the same
    weights on the same views (seeds 0-2 measured): the loss within 0.2 % (measured at most 0.07 %), the gradient
    within 11 degrees of float32's (cosine above 0.98; measured 0.989-0.991 for SimCLR and BYOL, whose loss divides
    by small temperatures, 0.997 or more for the autoencoders and the VAE), BatchNorm's running statistics within
    1 %; the weights, their gradients, the statistics and the loss stay float32."""
    vit = names_an_encoder(METHOD_OVERRIDES[name])  # MAE's
    config = load_config(None, [*METHOD_OVERRIDES[name], *([] if vit else ["model.width=8", "model.embed_dim=16"])])
    spec = (
        EncoderSpec(
            config.model.encoder,
            1,
            28,
            (0.3,),
            (0.3,),
            backbone_args={**config.model.backbone_args, "img_size": 28, "in_chans": 1},
        )
        if vit
        else EncoderSpec("small_cnn", 1, 28, (0.3,), (0.3,), width=8, embed_dim=16)
    )
    torch.manual_seed(0)
    methods = {"fp32": build_method(config.method, spec, config.model).to(memory_format=torch.channels_last)}
    methods["bf16"] = copy.deepcopy(methods["fp32"])
    torch.manual_seed(1)
    views = [torch.rand(32, 1, 28, 28) for _ in range(METHODS[config.method.name].num_views)]
    losses, grads = {}, {}
    for precision, method in methods.items():
        optimizer = build_optimizer(method, config.optim, 32)
        torch.manual_seed(2)  # the same noise (corruption, sampling) in both
        losses[precision] = train_step(method, optimizer, views, autocast=precision == "bf16")
        grads[precision] = torch.cat([p.grad.flatten() for p in method.parameters() if p.grad is not None])
    assert losses["bf16"].dtype == grads["bf16"].dtype == torch.float32
    assert not torch.equal(losses["bf16"], losses["fp32"])  # autocast did run in bf16
    # (DINO's teacher temperature of 0.04 multiplies bf16's rounding of the features' cosines by 25: measured 0.22 %)
    torch.testing.assert_close(losses["bf16"], losses["fp32"], rtol=1e-2 if name == "dino" else 2e-3, atol=0)
    cosine = torch.nn.functional.cosine_similarity(grads["bf16"], grads["fp32"], dim=0)
    assert cosine > 0.98, f"{name}: gradient cosine {cosine:.5f}"
    assert all(p.dtype == torch.float32 for p in methods["bf16"].parameters())
    fp32, bf16 = dict(methods["fp32"].named_buffers()), dict(methods["bf16"].named_buffers())
    for key, value in fp32.items():
        assert bf16[key].dtype == value.dtype, key
        if value.is_floating_point():
            torch.testing.assert_close(bf16[key], value, rtol=1e-2, atol=1e-3, msg=key)
