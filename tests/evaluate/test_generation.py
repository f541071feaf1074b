import torch
from PIL import Image

from pipeline.evaluate.generation import interpolations, prior_samples
from pipeline.evaluate.plots import latent_scatter_png
from pipeline.methods import METHODS, build_method
from pipeline.models import EncoderSpec, ModelConfig


def _method(name):
    spec = EncoderSpec("small_cnn", 1, 28, (0.0,), (1.0,), width=4, embed_dim=8)
    return build_method(METHODS[name].Options(bottleneck=3), spec, ModelConfig()).eval()


def test_prior_samples_are_images_and_seeded():
    vae = _method("vae")
    samples = prior_samples(vae, 6, seed=1)
    assert samples.shape == (6, 1, 28, 28) and samples.min() >= 0 and samples.max() <= 1
    torch.testing.assert_close(samples, prior_samples(vae, 6, seed=1))
    assert not torch.allclose(samples, prior_samples(vae, 6, seed=2))


def test_interpolations_run_from_one_code_to_the_other():
    for name in ("vae", "autoencoder"):
        method = _method(name)
        starts, ends = torch.rand(2, 1, 28, 28), torch.rand(2, 1, 28, 28)
        rows = interpolations(method, starts, ends, steps=5)
        assert len(rows) == 2 and rows[0].shape == (5, 1, 28, 28)
        with torch.no_grad():
            torch.testing.assert_close(rows[1][0], method.reconstruct(starts)[0][1])
            torch.testing.assert_close(rows[1][-1], method.reconstruct(ends)[0][1])


def test_latent_scatter_for_two_and_more_dimensions(tmp_path):
    labels = torch.arange(60) % 3
    for k in (2, 5):
        path = latent_scatter_png(
            torch.randn(60, k).numpy(), labels.numpy(), ["a", "b", "c"], tmp_path / f"{k}.png", "t"
        )
        assert Image.open(path).size[0] > 300
