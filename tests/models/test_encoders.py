"""Encoder specs from the data: the ResNet stem follows the image size unless the job sets it."""

import torch

from pipeline.data import read_manifest
from pipeline.models import ModelConfig, build_encoder, encoder_spec


def test_the_resnet_stem_follows_the_image_size_unless_set(labeled_photo_shards, synthetic_shards):
    photos, small = read_manifest(labeled_photo_shards), read_manifest(synthetic_shards)
    resnet = ModelConfig(encoder="resnet18")
    assert encoder_spec(resnet, photos, 224).cifar_stem is False  # ImageNet stem: 7x7 stride 2 and max-pool
    assert encoder_spec(resnet, photos, 64).cifar_stem is True
    assert encoder_spec(resnet, small).cifar_stem is True  # 28 px
    assert encoder_spec(ModelConfig(encoder="resnet18", cifar_stem=True), photos, 224).cifar_stem is True
    assert encoder_spec(ModelConfig(encoder="resnet18", cifar_stem=False), small).cifar_stem is False
    body = build_encoder(encoder_spec(resnet, photos, 224))[0][1]
    assert body.conv1.kernel_size == (7, 7) and isinstance(body.maxpool, torch.nn.MaxPool2d)


def test_a_1x1_last_convolution_keeps_the_representation_at_a_sixth_of_the_multiply_adds(synthetic_shards):
    small = read_manifest(synthetic_shards)  # 28 px: convolutions at 28, 14 (after a pool), 7 and 7 px
    macs = {}
    for kernel in (3, 1):
        encoder, dim = build_encoder(encoder_spec(ModelConfig(width=16, embed_dim=1024, last_kernel=kernel), small))
        assert dim == 1024 and encoder(torch.rand(2, 1, 28, 28)).shape == (2, 1024)
        convolutions = [m for m in encoder.modules() if isinstance(m, torch.nn.Conv2d)]
        assert convolutions[-1].kernel_size == (kernel, kernel)
        macs[kernel] = sum(m.weight.numel() * size**2 for m, size in zip(convolutions, (28, 14, 7, 7), strict=True))
    assert 5.5 < macs[3] / macs[1] < 6.5
