"""MAE's pieces as pure functions: patches in the ViT's order, masks of the right size, the loss by hand."""

import pytest
import torch

from pipeline.losses.masked_patches import masked_patch_loss, patchify, random_masking, unpatchify


def test_patches_are_read_row_major_as_a_vits_patch_embedding_reads_them():
    images = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).reshape(2, 3, 4, 4)
    patches = patchify(images, 2)
    assert patches.shape == (2, 4, 12)
    # patch 1 is the top-right 2x2 block; its values ordered (row, column, channel)
    expected = torch.stack([images[0, :, r, c] for r in (0, 1) for c in (2, 3)]).reshape(-1)
    assert torch.equal(patches[0, 1], expected)
    conv = torch.nn.Conv2d(3, 12, 2, stride=2, bias=False)  # the patch embedding's layout: one token per block
    with torch.no_grad():
        conv.weight.copy_(torch.eye(12).reshape(12, 2, 2, 3).permute(0, 3, 1, 2))
    tokens = conv(images).flatten(2).transpose(1, 2)
    assert torch.equal(tokens, patches)
    assert torch.equal(unpatchify(patches, 2, 3, 4), images)


def test_each_sample_keeps_its_own_random_subset():
    torch.manual_seed(0)
    kept, masked = random_masking(64, 49, 12, torch.device("cpu"))
    assert kept.shape == (64, 12) and masked.shape == (64, 49)
    assert (masked.sum(1) == 37).all() and (kept.diff(1) > 0).all()  # ascending, distinct
    assert not masked.gather(1, kept).any()
    assert len({tuple(row) for row in kept.tolist()}) == 64
    share = (~masked).float().mean(0)  # every position about equally often visible
    assert share.min() > 0.05 and share.max() < 0.5


def test_the_loss_counts_only_the_masked_patches_by_hand():
    prediction = torch.tensor([[[1.0, 1.0], [0.0, 0.0], [3.0, 1.0]]])
    target = torch.tensor([[[0.0, 0.0], [5.0, 5.0], [1.0, 3.0]]])
    masked = torch.tensor([[True, False, True]])
    # patch 0: mean(1, 1) = 1; patch 2: mean(4, 4) = 4; patch 1 is visible and does not count
    assert masked_patch_loss(prediction, target, masked, norm_pix=False).item() == pytest.approx(2.5)
    # norm_pix: patch 0 (0, 0) -> (0, 0); patch 2 (1, 3): mean 2, unbiased var 2 -> (-1, 1) / sqrt(2 + 1e-6)
    normed = torch.tensor([-1.0, 1.0]) / (2 + 1e-6) ** 0.5
    by_hand = ((torch.tensor([1.0, 1.0]) ** 2).mean() + ((torch.tensor([3.0, 1.0]) - normed) ** 2).mean()) / 2
    assert masked_patch_loss(prediction, target, masked).item() == pytest.approx(by_hand.item(), rel=1e-6)
