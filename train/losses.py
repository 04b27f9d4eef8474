"""Contrastive losses shared by the strategies.

``info_nce`` / ``pairwise_info_nce``: Fürer et al. (paper 000) eq. 1-2.
``combinatorial_loss``: Everything at Once (paper 001) eq. 2-4, as the reference code
computes it: each term is the sum of both directions, and only rows where every modality
of both subsets is present take part (absent rows are neither positives nor negatives).
"""

from __future__ import annotations

import itertools

import numpy as np
import torch
import torch.nn.functional as F


def info_nce(x: torch.Tensor, y: torch.Tensor, tau: float = 0.05) -> torch.Tensor:
    """Paper 000 eq. 1: ``-1/N sum_i log softmax_j(x_i . y_j / tau)[i]``, one direction.

    ``x``, ``y``: (N, d), row ``i`` of each aligned. Both are L2-normalised here, so the dot
    product is the cosine similarity that the temperature of 0.05 is meant for ([38]).
    """
    x = F.normalize(x.float(), dim=-1)
    y = F.normalize(y.float(), dim=-1)
    logits = x @ y.T / tau  # (N, N)
    return F.cross_entropy(logits, torch.arange(len(x), device=x.device))


def multi_positive_nce(logits: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
    """Supervised-contrastive InfoNCE of rows against columns (Khosla et al. 2020, eq. 2, L_out).

    ``logits``: (N, M) similarities / tau; ``positive``: bool (N, M), the positives of each
    row. Each row's loss is minus the mean log-softmax (over all M columns) of its positives;
    rows without a positive take no part. With ``positive`` the identity this is eq. 1 of
    paper 000.
    """
    logp = F.log_softmax(logits, dim=1)
    pos = positive.to(logp.dtype)
    n = pos.sum(1)
    keep = n > 0
    per_row = -(logp * pos).sum(1)[keep] / n[keep]
    return per_row.mean() if bool(keep.any()) else logits.sum() * 0.0


def class_nce_both_ways(x, y, cx, cy, tau: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``x->y`` and ``y->x`` multi-positive InfoNCE: same-class items are positives (inputs L2-normalised)."""
    logits = x @ y.T / tau
    same = cx.unsqueeze(1) == cy.unsqueeze(0)  # (N, M)
    return multi_positive_nce(logits, same), multi_positive_nce(logits.T, same.T)


def _both(a: torch.Tensor, b: torch.Tensor, ma, mb) -> tuple | None:
    """``a``, ``b`` restricted to rows present in both masks; None when no row is.

    Masks are numpy (as the samplers make them, on the host) or torch bool arrays. Host masks
    are counted on the host and turned into row indices, so a CUDA step never waits for the
    device here (counting, or indexing with, a device mask is a host synchronisation).
    """
    if ma is None and mb is None:
        return a, b
    keep = ma if mb is None else (mb if ma is None else ma & mb)
    if isinstance(keep, np.ndarray):
        rows = np.flatnonzero(keep)
        if len(rows) == 0:
            return None
        idx = torch.as_tensor(rows, device=a.device)
        return a.index_select(0, idx), b.index_select(0, idx)
    if int(keep.sum()) == 0:
        return None
    return a[keep], b[keep]


def nce_both_ways(x: torch.Tensor, y: torch.Tensor, tau: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(info_nce(x, y), info_nce(y, x))`` from one similarity matrix (inputs already L2-normalised)."""
    logits = x @ y.T / tau  # (N, N)
    target = torch.arange(len(x), device=x.device)
    return F.cross_entropy(logits, target), F.cross_entropy(logits.T, target)


def pairwise_info_nce(embs: dict, tau: float = 0.05, masks: dict | None = None,
                      classes: dict | None = None) -> dict[str, torch.Tensor]:
    """Paper 000 eq. 2: InfoNCE averaged over all ordered pairs of the modalities given.

    ``classes`` (optional, modality -> class per row): every same-class item of the other
    modality is a positive (:func:`class_nce_both_ways`) instead of the row's partner only.

    Returns ``{"loss": mean, "loss/a-b": InfoNCE(a, b), ...}`` with one part per ordered pair.
    ``masks`` (optional, modality -> bool (N,), numpy or torch): instance-aligned batches with missing
    modalities; a pair uses only the rows where both are present, and a pair with no such
    row is left out of the mean. Both directions of a pair share one similarity matrix.
    """
    if len(embs) < 2:
        raise ValueError("pairwise InfoNCE needs at least two modalities")
    masks = masks or {}
    normed = {m: F.normalize(e.float(), dim=-1) for m, e in embs.items()}
    parts = {}
    for a, b in itertools.combinations(embs, 2):
        if classes is not None:
            parts[f"loss/{a}-{b}"], parts[f"loss/{b}-{a}"] = class_nce_both_ways(normed[a], normed[b], classes[a], classes[b], tau)
            continue
        rows = _both(normed[a], normed[b], masks.get(a), masks.get(b))
        if rows is not None:
            parts[f"loss/{a}-{b}"], parts[f"loss/{b}-{a}"] = nce_both_ways(*rows, tau)
    if not parts:
        zero = next(iter(embs.values())).sum() * 0.0  # keeps the graph: no pair had a row in common
        return {"loss": zero}
    return {"loss": torch.stack(list(parts.values())).mean(), **parts}


def term_name(x: tuple, y: tuple) -> str:
    """``text-audio+video`` for the term between subsets ``x`` and ``y``."""
    return f"{'+'.join(map(str, x))}-{'+'.join(map(str, y))}"


def combinatorial_loss(
    embs: dict, present: dict, terms: list, tau: float = 0.05
) -> dict[str, torch.Tensor]:
    """Paper 001 eq. 3: ``L = sum_(X,Y) lambda_XY (NCE(X->Y) + NCE(Y->X)) / sum_(X,Y) lambda_XY``.

    The division by the sum of the weights (of the terms that had rows) is the reference
    code's (``CombinatorialLoss``: ``loss_sum / weight_sum``); eq. 3 itself has none. It
    only rescales the loss (Adam's updates do not change), but keeps the logged values
    equal to the reference's.

    ``embs``: subset (tuple of modality names) -> (B, d) embedding of the batch;
    ``present``: subset -> bool (B,), rows where every modality of the subset is present;
    ``terms``: ``(X, Y, weight)`` with ``X``, ``Y`` disjoint subsets. A term with no row in
    common is skipped (it would be a loss over an empty batch). ``loss/<X>-<Y>`` parts are
    the unweighted terms, so runs with different weights stay comparable.
    """
    total, weight, parts = None, 0.0, {}
    for x, y, w in terms:
        if set(x) & set(y):
            raise ValueError(f"combinatorial loss terms need disjoint subsets, got {x} and {y}")
        keep = present[x] & present[y]
        if int(keep.sum()) == 0:
            continue
        a, b = F.normalize(embs[x][keep].float(), dim=-1), F.normalize(embs[y][keep].float(), dim=-1)
        term = sum(nce_both_ways(a, b, tau))
        parts[f"loss/{term_name(x, y)}"] = term
        total = w * term if total is None else total + w * term
        weight += w
    if total is None:
        return {"loss": sum(e.sum() for e in embs.values()) * 0.0}
    return {"loss": total / weight if weight else total, **parts}
