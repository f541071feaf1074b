import numpy as np
import torch
from torch import nn

from pipeline.data import LabeledShards, ShardLoader
from pipeline.evaluate.knn import knn_accuracy
from pipeline.evaluate.online import OnlineKnn


def test_online_knn_votes_with_a_fixed_train_slice(synthetic_shards):
    online = OnlineKnn(LabeledShards(str(synthetic_shards)), 400, k=20, temperature=0.1)
    assert "_slice" not in vars(online)  # made where the job is configured, it reads its images where it runs
    assert online.images.shape == (500, 1, 28, 28) and online.bank_size == 400
    ordered = ShardLoader(synthetic_shards, "train", 500, rank=0, world_size=1, shuffle=False, drop_last=False)
    images, labels, _ = next(iter(ordered))  # the same first 500 training images
    np.testing.assert_array_equal(online.labels, labels.numpy())
    pixels = (images.float() / 255).flatten(1).numpy()
    encoder = nn.Sequential(nn.Flatten(), nn.BatchNorm1d(784, affine=False)).train()
    encoder[1].running_mean.zero_()  # eval mode: identity, so the features are the pixels
    accuracy = online(encoder, torch.device("cpu"))["online_knn_accuracy"]
    assert accuracy == knn_accuracy(pixels[:400], labels[:400].numpy(), pixels[400:], labels[400:].numpy(), 20, 0.1)
    assert accuracy > 0.5 and encoder.training  # gratings are separable in pixel space; train mode restored


def test_a_small_split_keeps_a_fifth_for_queries(even_shards):
    online = OnlineKnn(LabeledShards(str(even_shards)), 5000, k=20, temperature=0.1)
    assert len(online.images) == 1024 and online.bank_size == 819
