"""Contrastive losses shared by the strategies.

``info_nce`` / ``pairwise_info_nce``: Fürer et al. (paper 000) eq. 1-2.
``combinatorial_loss``: Everything at Once (paper 001) eq. 2-4, as the reference code
computes it: each term is the sum of both directions, and only rows where every modality
of both subsets is present take part (absent rows are neither positives nor negatives);
optionally with same-class rows as positives, as ``pairwise_info_nce``'s ``classes``.
"""

from __future__ import annotations

import itertools

import numpy as np
import torch
import torch.nn.functional as F

from mmx.train.samplers import to_device


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
    keep = (n > 0).to(logp.dtype)
    # the mean over rows with a positive, as sums over all rows: no host sync on the count
    per_row = -(logp * pos).sum(1) / n.clamp_min(1)
    return (per_row * keep).sum() / keep.sum().clamp_min(1)


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
        if len(rows) == len(keep):
            return a, b
        idx = to_device(rows, a.device)  # pinned and non-blocking on CUDA: the host does not wait
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
    pairs = list(itertools.combinations(embs, 2))
    names, values = [], []  # part names and 1-D tensors of their values, in that order
    if classes is None:  # the pairs that use every row: one batched computation for all of them
        whole = [(a, b) for a, b in pairs if masks.get(a) is None and masks.get(b) is None]
        if whole:
            names += [f"loss/{a}-{b}" for a, b in whole] + [f"loss/{b}-{a}" for a, b in whole]
            values.append(nce_all_pairs(normed, whole, tau))
        pairs = [p for p in pairs if p not in whole]
    for a, b in pairs:
        if classes is not None:
            both = class_nce_both_ways(normed[a], normed[b], classes[a], classes[b], tau)
        else:
            rows = _both(normed[a], normed[b], masks.get(a), masks.get(b))
            if rows is None:
                continue
            both = nce_both_ways(*rows, tau)
        names += [f"loss/{a}-{b}", f"loss/{b}-{a}"]
        values.append(torch.stack(both))
    if not names:
        zero = next(iter(embs.values())).sum() * 0.0  # keeps the graph: no pair had a row in common
        return {"loss": zero}
    flat = torch.cat(values) if len(values) > 1 else values[0]
    return {"loss": flat.mean(), **dict(zip(names, flat.unbind(0)))}


def nce_all_pairs(normed: dict, pairs: list, tau: float) -> torch.Tensor:
    """Both InfoNCE directions of every pair in one batched computation (a few
    kernels per step instead of a dozen per pair): ``[a->b for each pair] + [b->a for each pair]``,
    shape (2U, ...).

    ``normed``: modality -> (..., B, d) L2-normalised, all of one shape; leading dimensions are
    separate batches. Each value is :func:`nce_both_ways`'s: the cross-entropy of a row against
    the other modality's batch, its partner (same row) the target: minus the mean of the
    log-softmax diagonal. (Chosen because on a CPU it is no slower than pair by pair, where a
    logsumexp form, or one cross-entropy over both directions stacked, was.)
    """
    if len(pairs) == 1:  # a view, not a copy (round-robin's one pair per batch)
        x, y = normed[pairs[0][0]][None], normed[pairs[0][1]][None]  # (1, ..., B, d)
    else:
        x, y = torch.stack([normed[a] for a, _ in pairs]), torch.stack([normed[b] for _, b in pairs])  # (U, ..., B, d)
    lead, (b, d) = x.shape[:-2], x.shape[-2:]
    logits = torch.bmm(x.reshape(-1, b, d), y.reshape(-1, b, d).transpose(1, 2)) / tau  # (U * n, B, B)
    # x->y: each row's log-softmax at its partner; y->x: each column's (no transposed copy)
    rows = F.log_softmax(logits, dim=-1).diagonal(dim1=1, dim2=2)
    cols = F.log_softmax(logits, dim=-2).diagonal(dim1=1, dim2=2)
    return -torch.cat([rows, cols]).mean(-1).view(2 * lead[0], *lead[1:])


def pairwise_info_nce_sums(embs: dict, tau: float = 0.05) -> dict[str, torch.Tensor]:
    """:func:`pairwise_info_nce` of ``n`` batches at once (every row present, pair positives),
    summed over the batches: ``embs`` modality -> (n, B, d); ``{"loss": sum of the batches'
    losses, "loss/a-b": sum of the batches' InfoNCE(a, b), ...}`` (divide by ``n`` for means)."""
    normed = {m: F.normalize(e.float(), dim=-1) for m, e in embs.items()}
    pairs = list(itertools.combinations(embs, 2))
    names = [f"loss/{a}-{b}" for a, b in pairs] + [f"loss/{b}-{a}" for a, b in pairs]
    values = nce_all_pairs(normed, pairs, tau)  # (2U, n)
    return {"loss": values.mean(0).sum(), **dict(zip(names, values.sum(1).unbind(0)))}


def term_name(x: tuple, y: tuple) -> str:
    """``text-audio+video`` for the term between subsets ``x`` and ``y``."""
    return f"{'+'.join(map(str, x))}-{'+'.join(map(str, y))}"


def combinatorial_loss(
    embs: dict, present: dict, terms: list, tau: float = 0.05, classes: torch.Tensor | None = None
) -> dict[str, torch.Tensor]:
    """Paper 001 eq. 3: ``L = sum_(X,Y) lambda_XY (NCE(X->Y) + NCE(Y->X)) / sum_(X,Y) lambda_XY``.

    The division by the sum of the weights (of the terms that had rows) is the reference
    code's (``CombinatorialLoss``: ``loss_sum / weight_sum``); eq. 3 itself has none. It
    only rescales the loss (Adam's updates do not change), but keeps the logged values
    equal to the reference's.

    ``embs``: subset (tuple of modality names) -> (B, d) embedding of the batch;
    ``present``: subset -> bool (B,), rows where every modality of the subset is present (numpy
    masks, as the strategy builds them on the host, cost the device no wait; see :func:`_both`);
    ``terms``: ``(X, Y, weight)`` with ``X``, ``Y`` disjoint subsets. A term with no row in
    common is skipped (it would be a loss over an empty batch). ``loss/<X>-<Y>`` parts are
    the unweighted terms, so runs with different weights stay comparable.

    ``classes`` (optional, (B,), the class of each batch row: class-aligned rows share it across
    modalities): every same-class row of the other side is a positive of a row
    (:func:`class_nce_both_ways`) instead of its own row only; with one class per row this is
    the pair loss.
    """
    total, weight, parts = None, 0.0, {}
    for x, y, w in terms:
        if set(x) & set(y):
            raise ValueError(f"combinatorial loss terms need disjoint subsets, got {x} and {y}")
        rows = _both(embs[x], embs[y], present[x], present[y])
        if rows is None:
            continue
        a, b = (F.normalize(e.float(), dim=-1) for e in rows)
        if classes is None:
            term = sum(nce_both_ways(a, b, tau))
        else:
            cx, cy = _both(classes, classes, present[x], present[y])
            term = sum(class_nce_both_ways(a, b, cx, cy, tau))
        parts[f"loss/{term_name(x, y)}"] = term
        total = w * term if total is None else total + w * term
        weight += w
    if total is None:
        return {"loss": sum(e.sum() for e in embs.values()) * 0.0}
    return {"loss": total / weight if weight else total, **parts}
