"""torchvision:/timm: backbones by name: built without their classifier, features read from the model, the stem
and channels handled as each library supports, ViT parameters exempt from decay, and bad names refused."""

import re

import pytest
import torch

from pipeline.config import load_config, validate
from pipeline.data import read_manifest
from pipeline.errors import ConfigError
from pipeline.models import ModelConfig, build_encoder, encoder_spec
from pipeline.models.backbones import classifier_path
from pipeline.optim import parameter_groups


@pytest.mark.parametrize(
    ("encoder", "dim", "classifier"),
    [
        ("torchvision:resnet18", 512, "fc"),
        ("torchvision:mobilenet_v3_small", 1024, "classifier.3"),
        ("torchvision:vit_b_16", 768, "heads.head"),
        ("timm:resnet18", 512, None),
        ("timm:vit_tiny_patch16_224", 192, None),
    ],
)
def test_library_backbones_end_at_features_read_from_the_model(encoder, dim, classifier, labeled_photo_shards):
    photos = read_manifest(labeled_photo_shards)  # 3-channel photos
    size = 224 if encoder.endswith("vit_b_16") else 64  # torchvision's ViT fixes its size; timm's takes ours
    spec = encoder_spec(ModelConfig(encoder=encoder), photos, size)
    model, out_dim = build_encoder(spec)
    assert out_dim == dim and model.eval()(torch.rand(2, 3, size, size)).shape == (2, dim)
    library, name = encoder.split(":")
    assert classifier_path(library, name, spec.backbone_args) == classifier
    assert not any(key.startswith(("fc.", "head.fc", "heads.")) for key in model[1].state_dict())


def test_timm_gets_channels_and_the_image_size_where_it_takes_one(synthetic_shards):
    small = read_manifest(synthetic_shards)  # 1 x 28 x 28
    vit = encoder_spec(ModelConfig(encoder="timm:vit_tiny_patch16_224", backbone_args={"patch_size": 4}), small)
    assert vit.backbone_args == {"in_chans": 1, "patch_size": 4, "img_size": 28}
    model, _ = build_encoder(vit)
    assert model[1].patch_embed.num_patches == 49  # (28 / 4) ** 2
    assert encoder_spec(ModelConfig(encoder="timm:resnet18"), small).backbone_args == {"in_chans": 1}


def test_grayscale_resnets_and_the_small_stem(synthetic_shards):
    gray = read_manifest(synthetic_shards)  # 1 x 28 x 28
    spec = encoder_spec(ModelConfig(encoder="torchvision:resnet18"), gray)
    body = build_encoder(spec)[0][1]
    assert spec.cifar_stem and body.conv1.in_channels == 1 and body.conv1.kernel_size == (3, 3)
    vit = build_encoder(encoder_spec(ModelConfig(encoder="timm:vit_tiny_patch16_224"), gray))[0]
    assert vit[1].patch_embed.proj.in_channels == 1 and vit(torch.rand(2, 1, 28, 28)).shape == (2, 192)
    with pytest.raises(ConfigError, match="torchvision:mobilenet_v3_small takes 3-channel images"):
        build_encoder(encoder_spec(ModelConfig(encoder="torchvision:mobilenet_v3_small"), gray))


def test_vit_position_embedding_and_class_token_take_no_weight_decay(synthetic_shards):
    spec = encoder_spec(ModelConfig(encoder="timm:vit_tiny_patch16_224"), read_manifest(synthetic_shards))
    model, _ = build_encoder(spec)
    decay, no_decay = parameter_groups(model, 0.05)
    exempt = {id(model[1].pos_embed), id(model[1].cls_token)}
    assert exempt <= {id(p) for p in no_decay["params"]} and not exempt & {id(p) for p in decay["params"]}
    assert all(p.ndim >= 2 for p in decay["params"])


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model.encoder=torchvision:resnet9000", "model.encoder: torchvision has no classification model 'resnet9000'"),
        ("model.encoder=timm:not_a_model", "model.encoder: timm has no model 'not_a_model'"),
        ("model.encoder=keras:resnet50", "model.encoder: unknown library 'keras'"),
    ],
)
def test_unknown_backbones_are_refused_before_anything_runs(override, message):
    with pytest.raises(ConfigError, match=message):
        validate(load_config(None, [override]))


def test_backbone_args_and_stem_refused_where_they_do_not_apply(synthetic_shards):
    small = read_manifest(synthetic_shards)
    with pytest.raises(ConfigError, match=re.escape("model.backbone_args: small_cnn is built in")):
        encoder_spec(ModelConfig(backbone_args={"depth": 3}), small)
    with pytest.raises(ConfigError, match=re.escape("model.cifar_stem: timm:resnet18 has no ResNet stem")):
        encoder_spec(ModelConfig(encoder="timm:resnet18", cifar_stem=True), small)
    with pytest.raises(ConfigError, match=re.escape("model.backbone_args: torchvision:resnet18 refuses them")):
        build_encoder(encoder_spec(ModelConfig(encoder="torchvision:resnet18", backbone_args={"depth": 3}), small))
