import math
import re

import pytest
import torch

from pipeline.config import load_config
from pipeline.errors import ConfigError
from pipeline.methods import build_method
from pipeline.methods.simclr import SimCLROptions
from pipeline.models import EncoderSpec, ModelConfig, build_encoder


@pytest.mark.parametrize(("arch", "channels", "size", "dim"), [("small_cnn", 1, 28, 256), ("resnet18", 3, 32, 512)])
def test_encoder_shapes(arch, channels, size, dim):
    spec = EncoderSpec(arch, channels, size, (0.5,) * channels, (0.25,) * channels)
    encoder, out_dim = build_encoder(spec)
    assert out_dim == dim
    assert encoder(torch.rand(3, channels, size, size)).shape == (3, dim)


def test_normalisation_is_inside_the_encoder():
    spec = EncoderSpec("small_cnn", 1, 28, (0.5,), (0.25,))
    encoder, _ = build_encoder(spec)
    x = torch.rand(2, 1, 28, 28)
    torch.testing.assert_close(encoder[0](x), (x - 0.5) / 0.25)


def test_simclr_trains_its_encoder_to_match_two_views_of_each_image():
    """30 Adam steps on two noisy views of 8 fixed images: NT-Xent falls to under 0.6 of its first value (measured
    1.88 -> 0.89), through gradients that reach the encoder's first convolution."""
    torch.manual_seed(0)
    method = build_method(
        SimCLROptions(), EncoderSpec("small_cnn", 1, 28, (0.5,), (0.25,), width=8, embed_dim=16), ModelConfig()
    )
    images = torch.rand(8, 1, 28, 28)
    views = (
        (images + 0.05 * torch.randn_like(images)).clamp(0, 1),
        (images + 0.05 * torch.randn_like(images)).clamp(0, 1),
    )
    first = method.encoder[1][0].weight.detach().clone()
    optimizer = torch.optim.Adam(method.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        loss = method(*views)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses) and losses[-1] < 0.6 * losses[0], losses
    assert not torch.equal(method.encoder[1][0].weight, first)


def test_unknown_encoder_and_method():
    with pytest.raises(ConfigError, match=re.escape("model.encoder: unknown encoder 'vit'")):
        build_encoder(EncoderSpec("vit", 3, 32, (0.5,) * 3, (0.5,) * 3))
    with pytest.raises(ConfigError, match=re.escape("model.encoder: unknown encoder 'vit'")):
        load_config(None, ["model.encoder=vit"])
    with pytest.raises(ConfigError, match=re.escape("method.name: unknown method 'moco'; choose one of simclr")):
        load_config(None, ["method.name=moco"])


@pytest.mark.parametrize("arch", ["small_cnn", "linear", "resnet18", "resnet50"])
def test_every_built_in_encoder_and_alias_builds(arch):
    spec = EncoderSpec(arch, 1, 32, (0.5,), (0.25,), width=4, embed_dim=8, bottleneck=4)
    encoder, dim = build_encoder(spec)
    assert dim == 4 and encoder(torch.rand(2, 1, 32, 32)).shape == (2, 4)


def _mae(**options):
    from pipeline.methods.mae import MAEOptions

    spec = EncoderSpec(
        "timm:vit_tiny_patch16_224",
        1,
        28,
        (0.5,),
        (0.25,),
        cifar_stem=False,
        backbone_args={"patch_size": 7, "depth": 2, "embed_dim": 32, "num_heads": 2, "img_size": 28, "in_chans": 1},
    )
    return build_method(MAEOptions(decoder_dim=32, decoder_depth=1, **options), spec, ModelConfig())


def test_the_mae_encoder_on_every_patch_is_the_vits_own_forward():
    """With every patch visible the masked path is timm's ``forward_features`` (pins timm's internals we call);
    at the default ratio each image keeps 4 of its 16 patches."""
    torch.manual_seed(0)
    method = _mae().eval()
    from pipeline.models.masked_vit import encode_visible

    x = torch.rand(3, 1, 28, 28)
    images = method.encoder[0](x)
    every = torch.arange(16).expand(3, -1)
    torch.testing.assert_close(
        encode_visible(method.encoder[1], images, every), method.encoder[1].forward_features(images)
    )
    prediction, target, masked = method.predict(x)
    assert prediction.shape == target.shape == (3, 16, 49) and (masked.sum(1) == 12).all()
    assert method.encoder(x).shape == (3, 32)  # what is evaluated and exported: the ViT's class token


def test_mae_learns_to_fill_in_masked_patches_and_only_they_count():
    """60 Adam steps on 16 images of one grey level each (a masked patch is its visible neighbours' level): the
    loss on masked patches falls below half of its first value; a prediction that is exact on the masked patches
    scores 0 whatever it says on the visible ones."""
    torch.manual_seed(0)
    method = _mae(norm_pix_loss=False)
    images = torch.rand(16, 1, 1, 1).expand(16, 1, 28, 28)
    optimizer = torch.optim.Adam(method.parameters(), lr=2e-3)
    losses = []
    for _ in range(60):
        loss = method(images)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses) and losses[-1] < 0.5 * losses[0], losses[::10]
    from pipeline.losses.masked_patches import masked_patch_loss

    _, target, masked = method.predict(images)
    guess = torch.where(masked[..., None], target, target + 1)
    assert masked_patch_loss(guess, target, masked, norm_pix=False).item() == 0


def test_mae_refuses_an_encoder_that_is_not_a_vit():
    from pipeline.methods.mae import MAEOptions

    with pytest.raises(ConfigError, match=re.escape("model.encoder: method mae needs a timm ViT")):
        build_method(MAEOptions(), EncoderSpec("small_cnn", 1, 28, (0.5,), (0.25,)), ModelConfig())


def test_mae_shows_what_it_rebuilt_and_scores_the_masked_patches(synthetic_shards, tmp_path):
    """Evaluation of a masked-image model: ``masked_recon_mse`` is the mean of the per-image errors the loss
    averages, the grid's masked inputs are grey exactly where the reconstruction differs from the original (the
    visible patches are kept), and the PNG is written."""
    from pipeline.data import LabeledShards
    from pipeline.evaluate.masked import masked_reconstructions

    torch.manual_seed(0)
    method = _mae()
    x = torch.rand(4, 1, 28, 28)
    errors, masked_input, rebuilt = method.masked_reconstruction(x)
    assert errors.shape == (4,) and masked_input.shape == rebuilt.shape == x.shape
    unchanged = torch.isclose(rebuilt, x, atol=1e-5)
    grey = torch.isclose(masked_input, torch.tensor(0.5), atol=1e-6)
    assert torch.equal(~unchanged, grey) and unchanged.float().mean().item() == 0.25
    torch.manual_seed(3)
    expected = method(x).item()
    torch.manual_seed(3)
    assert method.masked_reconstruction(x)[0].mean().item() == pytest.approx(expected, rel=1e-5)
    metrics, rows = masked_reconstructions(method, LabeledShards(str(synthetic_shards)), torch.device("cpu"))
    assert set(metrics) == {"masked_recon_mse"} and metrics["masked_recon_mse"] > 0
    assert [r.shape for r in rows] == [(8, 1, 28, 28)] * 3


def _dino(**options):
    from pipeline.methods.dino import DINOOptions

    spec = EncoderSpec("small_cnn", 1, 28, (0.5,), (0.25,), width=8, embed_dim=16)
    return build_method(DINOOptions(out_dim=32, **options), spec, ModelConfig(head_hidden=32, head_dim=8))


def test_dino_schedules_the_teacher_and_freezes_the_prototypes_at_first():
    """After each step the teacher moves towards the student by ``1 - tau`` (cosine to 1), its temperature warms
    up linearly, the prototypes' gradients are zero for the first share of the steps, and the centre follows the
    teacher's mean output; all of it is in the state dict (a resumed run continues it)."""
    torch.manual_seed(0)
    method = _dino(warmup_teacher_temp=0.02, teacher_temp=0.06, teacher_temp_warmup=0.5, freeze_last_layer=0.2)
    views = torch.rand(2, 8, 1, 28, 28)
    loss = method(*views)
    assert method.center.abs().sum() > 0  # moved towards the teacher's outputs
    loss.backward()
    last = method.head.last.parametrizations.weight.original1
    assert last.grad.abs().sum() == 0 and method.head.mlp[0].weight.grad.abs().sum() > 0  # frozen at step 0
    before = method.teacher[0][1][0].weight.clone()
    with torch.no_grad():
        method.encoder[1][0].weight.add_(1.0)  # as if the optimizer had stepped
    method.after_step(25, 100)  # a quarter through: half the warm-up, past the freeze
    tau = method.tau
    expected = tau * before + (1 - tau) * method.encoder[1][0].weight
    torch.testing.assert_close(method.teacher[0][1][0].weight, expected)
    assert float(method.teacher_temp) == pytest.approx(0.04) and not method.frozen
    method.zero_grad()
    method(*views).backward()
    assert last.grad.abs().sum() > 0
    assert {"center", "teacher_temp", "frozen"} <= set(method.state_dict())


def test_dino_learns_to_give_two_views_of_an_image_the_same_prototypes():
    """40 Adam steps on two noisy views of 16 images. At initialisation every image lands on one prototype (the
    teacher's argmax); after, the images spread over several prototypes and two fresh views of an image mostly
    land on the same one (seeds 0-2 measured: 4, 6, 3 prototypes, 94%, 75%, 81% of the images)."""
    torch.manual_seed(0)
    method = _dino(teacher_temp=0.04, ema_base=0.9, freeze_last_layer=0.0)
    images = torch.rand(16, 1, 28, 28)

    def prototypes() -> tuple[float, int]:
        method.eval()
        with torch.no_grad():
            first, second = (method.head(method.encoder(noisy(images))).argmax(1) for _ in range(2))
        method.train()
        return (first == second).float().mean().item(), len(set(first.tolist()))

    def noisy(x: torch.Tensor) -> torch.Tensor:
        return (x + 0.05 * torch.randn_like(x)).clamp(0, 1)

    assert prototypes()[1] == 1
    optimizer = torch.optim.Adam([p for p in method.parameters() if p.requires_grad], lr=3e-3)
    for step in range(40):
        loss = method(noisy(images), noisy(images))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        method.after_step(step + 1, 40)
        assert math.isfinite(loss.item())
    agreement, used = prototypes()
    assert used >= 3 and agreement >= 0.75, (used, agreement)
