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
