"""Inter- and intra-modal triplet loss with semi-hard negatives, and the classification loss.

Paper 002 Sec. III-B eq. 1-2; thesis 004 Sec. 3.1-A eq. 3.1.4-3.1.7, Sec. 2.5-B and 2.6;
margins and weights from thesis Sec. 4.2 (alpha_1..3 = 1.0; gamma = 0.25, 0.25, 0.5).
Squared distances on L2-normalised outputs, every (anchor, positive) pair with one
semi-hard negative mined as TensorFlow's ``triplet_semihard_loss`` does, the inter-modal
term symmetric by default. The readings: docs/notes/train.md.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

_FAR = 1e9  # a finite stand-in for infinity keeps masked-out gradients free of NaN


def squared_distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(..., A, C) squared Euclidean distances between rows of ``a`` (..., A, D) and ``b`` (..., C, D)."""
    d = (a * a).sum(-1, keepdim=True) - 2 * a @ b.transpose(-1, -2) + (b * b).sum(-1).unsqueeze(-2)
    return d.clamp_min(0.0)


def select_semihard(dist: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor):
    """The mined negative for every (anchor, positive) cell.

    ``dist``: (..., A, C); ``positive``/``negative``: bool (..., A, C) masks over the candidates.
    Returns ``(d_an, index)``, each (..., A, C): for cell (a, p) the distance to, and the column
    of, the closest negative farther than ``dist[a, p]``, else the farthest negative.
    Cells that are not positive, or whose anchor has no negative, are meaningless.
    """
    # sort each anchor's negatives once; the first one beyond d_ap is found by binary search,
    # O(A C log C) instead of comparing every (positive, negative) pair, O(A C^2)
    cols = dist.shape[-1]
    sorted_d, order = torch.where(negative, dist, torch.full_like(dist, _FAR)).detach().sort(-1)
    first = torch.searchsorted(sorted_d.contiguous(), dist.detach().contiguous(), right=True)  # first sorted > d_ap
    has_semi = first < negative.sum(-1, keepdim=True)
    semi_idx = order.gather(-1, first.clamp(max=cols - 1))
    far_idx = torch.where(negative, dist, torch.full_like(dist, -_FAR)).argmax(-1, keepdim=True).expand_as(semi_idx)
    index = torch.where(has_semi, semi_idx, far_idx)
    value = dist.gather(-1, index)  # differentiable in the chosen distance
    return value, index


def triplet_terms(anchor: torch.Tensor, anchor_labels: torch.Tensor, cand: torch.Tensor, cand_labels: torch.Tensor,
                  margins: list, same_set: list) -> torch.Tensor:
    """Semi-hard triplet terms of ``R`` problems at once (R = ``len(margins)``), each the mean over
    its (anchor, positive) pairs of ``max(0, d_ap - d_an + margin)`` with the mined ``n``.

    ``anchor`` (R, ..., A, D), ``cand`` (R, ..., C, D), labels (R, ..., A) / (R, ..., C): problem
    ``r`` has margin ``margins[r]``, and ``same_set[r]`` says its candidates are its anchors
    (intra-modal: the diagonal is no positive). Returns (R, ...); a problem without a usable
    (a, p) pair gives 0 (with a graph). One batched computation: a few dozen kernels whatever
    R and the batch dimensions, and no host sync.
    """
    dist = squared_distances(anchor, cand)  # (R, ..., A, C)
    same = anchor_labels.unsqueeze(-1) == cand_labels.unsqueeze(-2)
    positive = same.clone()
    eye = torch.eye(dist.shape[-2], dist.shape[-1], dtype=torch.bool, device=dist.device)
    for r, self_set in enumerate(same_set):
        if self_set:
            positive[r] &= ~eye
    negative = ~same
    d_an, _ = select_semihard(dist, positive, negative)
    valid = (positive & negative.any(-1, keepdim=True)).to(dist.dtype)
    hinge = dist - d_an
    # the mean over valid cells as sums over all cells: no host sync on the count
    sums = torch.stack([(F.relu(hinge[r] + m) * valid[r]).sum((-2, -1)) for r, m in enumerate(margins)])
    return sums / valid.sum((-2, -1)).clamp_min(1)


def semihard_triplet_loss(
    anchor: torch.Tensor, anchor_labels: torch.Tensor, cand: torch.Tensor, cand_labels: torch.Tensor,
    margin: float = 1.0, same_set: bool = False,
) -> torch.Tensor:
    """One term of :func:`triplet_terms`: anchors (A, D) against candidates (C, D).

    ``same_set``: ``cand`` is ``anchor`` (intra-modal), so the diagonal is no positive.
    Returns 0 (with a graph) when the batch has no usable (a, p) pair.
    """
    return triplet_terms(anchor[None], anchor_labels[None], cand[None], cand_labels[None], [margin], [same_set])[0]


def pair_triplet_loss(
    fx: torch.Tensor, lx: torch.Tensor, fy: torch.Tensor, ly: torch.Tensor,
    margins=(1.0, 1.0, 1.0), gammas=(0.25, 0.25, 0.5), symmetric: bool = True,
) -> dict[str, torch.Tensor]:
    """Thesis eq. 3.1.6 for modality pairs: ``{"triplet", "intra_x", "intra_y", "inter"}``.

    ``fx`` (..., B, D) with classes ``lx`` (..., B), likewise ``fy``, ``ly``; leading dimensions
    are separate pairs (the blocks of a CVS step), each computed alone, all in one pass.
    """
    anchors, cands = [fx, fy, fx, fy], [fx, fy, fy, fx]  # intra x, intra y, inter x->y, inter y->x
    alabels, clabels = [lx, ly, lx, ly], [lx, ly, ly, lx]
    r = 4 if symmetric else 3
    terms = triplet_terms(torch.stack(anchors[:r]), torch.stack(alabels[:r]), torch.stack(cands[:r]), torch.stack(clabels[:r]),
                          [margins[0], margins[1], margins[2], margins[2]][:r], [True, True, False, False][:r])
    intra_x, intra_y = terms[0], terms[1]
    inter = 0.5 * (terms[2] + terms[3]) if symmetric else terms[2]
    total = gammas[0] * intra_x + gammas[1] * intra_y + gammas[2] * inter
    return {"triplet": total, "intra_x": intra_x, "intra_y": intra_y, "inter": inter}


def classification_loss(logits: torch.Tensor, labels: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Categorical cross-entropy (our reading of thesis eq. 3.1.4-3.1.5)."""
    return F.cross_entropy(logits, labels, reduction=reduction)
