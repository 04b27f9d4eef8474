"""PNG plots of a run: a query x retrieval heatmap, the training curves, the joint space in 2-D.

matplotlib is imported inside each function with the Agg backend (no display needed, and
``mmx --help`` stays fast).

* ``heatmap``: one metric per query/retrieval pair, the diagonal blank, as thesis 004 Table 8.
* ``training_curves``: every numeric series of ``metrics.jsonl`` against the epoch, losses in
  one panel and recalls (and other metrics) in another.
* ``projection``: a PCA of the split's embeddings (all modalities together, as they share one
  space), coloured by class and marked by modality, so a modality gap shows as separate clouds.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

MARKERS = {"text": "o", "image": "s", "audio": "^", "video": "D"}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    from mmx.cache.atomic import atomic_path

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, bbox_inches="tight")
    return path


def heatmap(results: dict, split: str, metric: str, path: str | Path) -> Path:
    """Query rows x retrieval columns of ``metric``; pairs without a value stay blank."""
    from mmx.eval.metrics import name_order
    from mmx.eval.tables import display

    plt = _pyplot()
    if split not in results["splits"]:
        raise ValueError(f"no split {split!r} in the results; have {', '.join(results['splits'])}")
    pairs = results["splits"][split]["pairs"]
    names = sorted({n for r in pairs for n in (r["query"], r["target"])}, key=name_order)
    grid = np.full((len(names), len(names)), np.nan)
    for r in pairs:
        if r.get(metric) is not None:
            grid[names.index(r["query"]), names.index(r["target"])] = r[metric]
    fig, ax = plt.subplots(figsize=(1.2 + 1.1 * max(1, len(names)), 1.0 + 1.0 * max(1, len(names))))
    im = ax.imshow(np.ma.masked_invalid(grid), cmap="viridis", vmin=0, vmax=None if metric in ("MedR", "MeanR") else 1)
    for i in range(len(names)):
        for j in range(len(names)):
            if not np.isnan(grid[i, j]):
                ax.text(j, i, f"{grid[i, j]:.2f}", ha="center", va="center", color="w", fontsize=8)
    ax.set_xticks(range(len(names)), [display(n) for n in names], rotation=45, ha="right")
    ax.set_yticks(range(len(names)), [display(n) for n in names])
    ax.set_xlabel("retrieval (R)")
    ax.set_ylabel("query (Q)")
    ax.set_title(f"{metric}, {split} split ({results['relevance']} relevance)")
    fig.colorbar(im, ax=ax, fraction=0.046)
    try:
        return _save(fig, path)
    finally:
        plt.close(fig)


def curve_panels(records: list[dict]) -> list[tuple[str, list[tuple[str, list]]]]:
    """The panels of ``training-curves.png``: ``(title, [(series, [(epoch, value)])])``, in drawing order.

    Losses (the totals first, then each part); the mean recalls and other summary metrics;
    Recall@10 of every query->target pair. Nothing is cut: a 4-modality run has 12 pairs, and
    each gets its own colour (:func:`distinct_colours`). Batch composition is not a curve.
    """
    series: dict[str, list[tuple[float, float]]] = {}
    for r in records:
        for k, v in r.items():
            if k in ("epoch", "seconds") or k.startswith("batch/") or isinstance(v, bool) or not isinstance(v, (int, float)):
                continue
            series.setdefault(k, []).append((r["epoch"], float(v)))
    order = lambda kv: (kv[0].count("/"), kv[0])  # noqa: E731 - totals before parts
    losses = sorted(((k, v) for k, v in series.items() if k.startswith("loss")), key=order)
    pairs = sorted((k, v) for k, v in series.items() if k.startswith("recall/") and not k.startswith("recall/mean")
                   and k.endswith("@10"))
    summary = sorted(((k, v) for k, v in series.items() if not k.startswith("loss") and (k, v) not in pairs
                      and not (k.startswith("recall/") and not k.startswith("recall/mean"))),
                     key=lambda kv: (not kv[0].startswith("recall/mean"), kv[0]))
    return [p for p in (("loss", losses), ("mean recall and summary metrics", summary), ("R@10 per pair", pairs)) if p[1]]


def distinct_colours(n: int) -> list:
    """``n`` colours, none repeated: tab20's for up to 20 series, evenly spaced hues beyond."""
    import matplotlib

    if n <= 20:
        return list(matplotlib.colormaps["tab20"].colors[:n])
    return [matplotlib.colormaps["hsv"](i / n) for i in range(n)]


def training_curves(run: str | Path, path: str | Path) -> Path | None:
    """Losses and recalls per epoch from ``metrics.jsonl`` (:func:`curve_panels`); None when there is nothing to plot."""
    from mmx.eval.runs import read_jsonl

    records = [r for r in read_jsonl(Path(run) / "metrics.jsonl") if isinstance(r, dict) and "epoch" in r]
    panels = curve_panels(records)
    if not panels:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4), squeeze=False)
    for ax, (title, group) in zip(axes[0], panels):
        for (k, pts), colour in zip(group, distinct_colours(len(group))):
            xs, ys = zip(*pts)
            ax.plot(xs, ys, marker="." if len(xs) < 30 else None, label=k, color=colour)
        ax.set_xlabel("epoch")
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=6)
        ax.grid(alpha=0.3)
    fig.suptitle(Path(run).name)
    try:
        return _save(fig, path)
    finally:
        plt.close(fig)


def projection(run: str | Path, split: str, path: str | Path, max_points: int = 4000, max_classes: int = 10, seed: int = 0) -> Path | None:
    """2-D PCA of the joint space: colour = class (the ``max_classes`` largest), marker = modality."""
    from mmx.eval.runs import load_embeddings

    data = {n: d for n, d in load_embeddings(run, split).items() if "+" not in n and len(d["emb"])}
    if not data:
        return None
    plt = _pyplot()
    from mmx.eval.metrics import name_order

    names = sorted(data, key=name_order)
    emb = np.concatenate([data[n]["emb"] for n in names]).astype(np.float64)
    emb /= np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    mods = np.concatenate([[n] * len(data[n]["emb"]) for n in names])
    labels = np.concatenate([data[n]["label"].astype(str) for n in names])
    uniq, counts = np.unique(labels, return_counts=True)
    shown = set(uniq[np.argsort(-counts, kind="stable")][:max_classes])
    keep = np.flatnonzero([lab in shown for lab in labels])
    rng = np.random.default_rng(seed)
    if len(keep) > max_points:
        keep = np.sort(rng.choice(keep, max_points, replace=False))
    centred = emb - emb.mean(0)  # PCA over every item, then the shown classes are drawn
    _, _, vt = np.linalg.svd(centred[rng.choice(len(emb), min(len(emb), 20000), replace=False)], full_matrices=False)
    xy = centred[keep] @ vt[:2].T
    fig, ax = plt.subplots(figsize=(7, 6))
    cmap = plt.get_cmap("tab10" if len(shown) <= 10 else "tab20")
    colour = {c: cmap(i % cmap.N) for i, c in enumerate(sorted(shown))}
    for m in names:
        sel = mods[keep] == m
        if sel.any():
            ax.scatter(xy[sel, 0], xy[sel, 1], c=[colour[c] for c in labels[keep][sel]], marker=MARKERS.get(m, "x"),
                       s=14, alpha=0.7, edgecolors="none")
    # grey proxies: the legend names the marker of each modality, not a class colour
    handles = [ax.scatter([], [], c="grey", marker=MARKERS.get(m, "x"), s=20, label=m) for m in names]
    ax.legend(handles=handles, title="modality", fontsize=8)
    ax.set_title(f"joint space, {split} split (PCA; colour = class, {len(shown)} largest)")
    ax.set_xlabel("PC 1")
    ax.set_ylabel("PC 2")
    try:
        return _save(fig, path)
    finally:
        plt.close(fig)
