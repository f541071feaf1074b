"""NT-Xent, the normalised temperature-scaled cross-entropy of SimCLR (Chen et al., 2020)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pipeline.distributed import gather_with_grad, world
from pipeline.losses.precision import in_float32


@in_float32
def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.5) -> torch.Tensor:
    """Mean NT-Xent over the ``2B`` local embeddings ``z1, z2`` ``(B, D)`` (two views of the same ``B`` images).

    With ``u = z / ||z||``, for anchor ``i`` whose positive (the other view of its image) is ``p(i)``:

        l_i = -log( exp(u_i . u_p(i) / t) / sum_{k != i} exp(u_i . u_k / t) )

    where ``k`` runs over both views of every image on every rank (``2 W B`` candidates). Under
    torch.distributed the columns are gathered with gradients; the local rows are the anchors, the
    self-similarity is masked out of the softmax (not subtracted), and labels are offset by this rank's
    position. Averaged over ranks (as DDP does), this equals the loss on the concatenated global batch.
    """
    rank, world_size = world()
    batch = z1.shape[0]
    u1, u2 = F.normalize(z1, dim=1), F.normalize(z2, dim=1)
    anchors = torch.cat([u1, u2])  # (2B, D)
    candidates = torch.cat([gather_with_grad(u1), gather_with_grad(u2)])  # (2WB, D)
    logits = anchors @ candidates.T / temperature  # (2B, 2WB)
    local = torch.arange(batch, device=z1.device) + rank * batch
    offset = world_size * batch
    self_columns = torch.cat([local, local + offset])
    positives = torch.cat([local + offset, local])
    rows = torch.arange(2 * batch, device=z1.device)
    mask = torch.zeros_like(logits, dtype=torch.bool)
    mask[rows, self_columns] = True
    return F.cross_entropy(logits.masked_fill(mask, float("-inf")), positives)
