"""PNG plots of a run: a query x retrieval heatmap, the training curves, the joint space in 2-D.

* ``heatmap``: one metric per query/retrieval pair, the diagonal blank, as thesis 004 Table 8;
  each number black or white, whichever contrasts more with its cell.
* ``training_curves``: the series of ``metrics.jsonl`` in panels (loss totals, loss parts,
  summary metrics, R@10 per pair), legends beside them; epochs counted across stages, with
  each stage's start marked.
* ``projection``: a PCA of a split's embeddings, colour = class, marker = modality.

Each has a ``*_figure`` twin that returns the unsaved figure (for tests). matplotlib is imported
inside the functions with the Agg backend, so ``mmx --help`` stays fast and no display is needed.
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


def text_colour(rgb) -> str:
    """Black or white, whichever contrasts more with a cell of colour ``rgb`` (WCAG luminance)."""
    lin = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in rgb[:3]]
    luminance = 0.2126 * lin[0] + 0.7152 * lin[1] + 0.0722 * lin[2]
    # contrast with black (L + 0.05) / 0.05 equals contrast with white 1.05 / (L + 0.05) at L = 0.179
    return "black" if luminance > 0.179 else "white"


def heatmap_figure(results: dict, split: str, metric: str):
    """The figure of :func:`heatmap` (not saved; the caller closes it)."""
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
                cell = im.cmap(im.norm(grid[i, j]))
                ax.text(j, i, f"{grid[i, j]:.2f}", ha="center", va="center", color=text_colour(cell), fontsize=9)
    ax.set_xticks(range(len(names)), [display(n) for n in names], rotation=45, ha="right")
    ax.set_yticks(range(len(names)), [display(n) for n in names])
    ax.set_xlabel("retrieval (R)")
    ax.set_ylabel("query (Q)")
    ax.set_title(f"{metric}, {split} split ({results['relevance']} relevance)")
    fig.colorbar(im, ax=ax, fraction=0.046)
    return fig


def heatmap(results: dict, split: str, metric: str, path: str | Path) -> Path:
    """Query rows x retrieval columns of ``metric``; pairs without a value stay blank."""
    return _save_and_close(heatmap_figure(results, split, metric), path)


def _save_and_close(fig, path: str | Path) -> Path:
    try:
        return _save(fig, path)
    finally:
        _pyplot().close(fig)


def epoch_axis(records: list[dict]) -> tuple[list[float], list[tuple[float, str]]]:
    """The x of each record that has an ``epoch``, and where each stage starts: ``(x, label)``.

    A multi-stage run counts epochs from 1 again in every stage; the x counts on across stages
    so the curves run left to right. A start's label carries the stage's ``stage_name`` when a
    record has one. The starts are empty for a run of one stage.
    """
    names = {r["stage"]: r["stage_name"] for r in records if "stage_name" in r and "stage" in r}
    xs, starts = [], []
    stage, offset, last = None, 0.0, 0.0
    for r in records:
        if "epoch" not in r:
            continue
        if r.get("stage") is not None and r["stage"] != stage:
            stage, offset = r["stage"], last
            name = names.get(stage)
            starts.append((offset + 0.5, f"stage {stage}" + (f": {name}" if name else "")))
        x = offset + float(r["epoch"])
        xs.append(x)
        last = max(last, x)
    return xs, (starts if len(starts) > 1 else [])


def curve_panels(records: list[dict]) -> list[tuple[str, list[tuple[str, list]]]]:
    """The panels of ``training-curves.png``: ``(title, [(series, [(x, value)])])``, in drawing order.

    The loss totals; the parts of the loss (when logged); the mean recalls and other summary
    metrics; Recall@10 of every query->target pair. ``x`` is the epoch counted across stages
    (:func:`epoch_axis`). Nothing is cut: a 4-modality run has 12 pairs, and each gets its own
    colour (:func:`distinct_colours`). Batch composition and the stage number are not curves.
    """
    series: dict[str, list[tuple[float, float]]] = {}
    for r, x in zip([r for r in records if "epoch" in r], epoch_axis(records)[0]):
        for k, v in r.items():
            if k in ("epoch", "seconds", "stage") or k.startswith("batch/") or isinstance(v, bool) or not isinstance(v, (int, float)):
                continue
            series.setdefault(k, []).append((x, float(v)))
    losses = sorted((k, v) for k, v in series.items() if k.startswith("loss") and "/" not in k)
    parts = sorted(((k, v) for k, v in series.items() if k.startswith("loss") and "/" in k), key=lambda kv: _loss_part(kv[0]))
    pairs = sorted((k, v) for k, v in series.items() if k.startswith("recall/") and not k.startswith("recall/mean")
                   and k.endswith("@10"))
    summary = sorted(((k, v) for k, v in series.items() if not k.startswith("loss") and (k, v) not in pairs
                      and not (k.startswith("recall/") and not k.startswith("recall/mean"))),
                     key=lambda kv: (not kv[0].startswith("recall/mean"), kv[0]))
    return [p for p in (("loss", losses), ("loss parts", parts), ("mean recall and summary metrics", summary),
                        ("R@10 per pair", pairs)) if p[1]]


def _loss_part(name: str) -> tuple[str, str]:
    """``"loss_val/cls/text-image"`` -> ``("cls/text-image", "loss_val")``: a part's train and val curves side by side."""
    head, _, part = name.partition("/")
    return part, head


def distinct_colours(n: int) -> list:
    """``n`` colours, none repeated: tab20's for up to 20 series, evenly spaced hues beyond."""
    import matplotlib

    if n <= 20:
        return list(matplotlib.colormaps["tab20"].colors[:n])
    return [matplotlib.colormaps["hsv"](i / n) for i in range(n)]


# a part's train and val losses share a colour; the line style tells them apart
_STYLE = {"loss_train": "-", "loss_val": "--", "loss_test": ":"}


def curves_figure(records: list[dict], title: str = ""):
    """The figure of :func:`training_curves` (not saved; the caller closes it); None when there is nothing to plot."""
    panels = curve_panels(records)
    if not panels:
        return None
    plt = _pyplot()
    from matplotlib.lines import Line2D

    starts = epoch_axis(records)[1]

    def xy(pts):
        # a stage changes what is trained: its curves are not joined to the stage before
        for cut in reversed([x for x, _ in starts]):
            pts = [p for p in pts if p[0] < cut] + [(cut, np.nan)] + [p for p in pts if p[0] > cut]
        return zip(*pts)

    def dots(pts):
        # every point marked (a lone point, such as the untrained epoch 0, has no line), smaller when many
        return {"marker": ".", "markersize": 6 if len(pts) < 30 else 2}

    fig, axes = plt.subplots(len(panels), 1, figsize=(9, 2.9 * len(panels)), sharex=True, squeeze=False,
                             layout="constrained")
    for ax, (name, group) in zip(axes[:, 0], panels):
        if name == "loss parts":
            keys = sorted({_loss_part(k)[0] for k, _ in group})
            colour = dict(zip(keys, distinct_colours(len(keys))))
            for k, pts in group:
                part, head = _loss_part(k)
                xs, ys = xy(pts)
                ax.plot(xs, ys, _STYLE.get(head, "-."), color=colour[part], lw=1, **dots(pts))
            logged = {_loss_part(k)[1] for k, _ in group}
            heads = [h for h in _STYLE if h in logged] + sorted(logged - set(_STYLE))
            handles = [Line2D([], [], color=colour[p], label=p) for p in keys]
            handles += [Line2D([], [], color="black", ls=_STYLE.get(h, "-."), label=h.removeprefix("loss_")) for h in heads]
        else:
            for (k, pts), c in zip(group, distinct_colours(len(group))):
                xs, ys = xy(pts)
                ax.plot(xs, ys, label=k, color=c, lw=1.2, **dots(pts))
            handles = ax.get_legend_handles_labels()[0]
        # beside the panel, never over the curves; long legends wrap into columns
        ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0, fontsize=7,
                  ncol=1 + (len(handles) - 1) // 16, frameon=False)
        ax.set_title(name, fontsize=9, loc="left")
        ax.grid(alpha=0.3)
        for x, label in starts:
            ax.axvline(x, color="0.35", ls=":", lw=1)
            if ax is axes[0, 0]:
                ax.annotate(label, (x, 1.0), xycoords=("data", "axes fraction"), xytext=(2, 2), textcoords="offset points",
                            fontsize=7, color="0.25", ha="left", va="bottom", rotation=0 if len(starts) <= 4 else 30)
    from matplotlib.ticker import MaxNLocator

    axes[-1, 0].xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[-1, 0].set_xlabel("epoch, counted across stages (dotted lines: stage starts)" if starts else "epoch")
    fig.suptitle(title)
    return fig


def training_curves(run: str | Path, path: str | Path) -> Path | None:
    """Losses and recalls per epoch from ``metrics.jsonl`` (:func:`curve_panels`); None when there is nothing to plot."""
    from mmx.eval.runs import read_jsonl

    records = [r for r in read_jsonl(Path(run) / "metrics.jsonl") if isinstance(r, dict)]
    fig = curves_figure(records, Path(run).name)
    return None if fig is None else _save_and_close(fig, path)


def projection_figure(data: dict, split: str, max_points: int = 4000, max_classes: int = 10, seed: int = 0):
    """The figure of :func:`projection` from ``{modality: {"emb", "label"}}``; None when there is nothing to plot."""
    from mmx.eval.metrics import name_order

    data = {n: d for n, d in data.items() if "+" not in n and len(d["emb"])}
    if not data:
        return None
    plt = _pyplot()
    names = sorted(data, key=name_order)
    emb = np.concatenate([data[n]["emb"] for n in names]).astype(np.float64)
    emb /= np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    mods = np.concatenate([[n] * len(data[n]["emb"]) for n in names])
    labels = np.concatenate([np.asarray(data[n]["label"]).astype(str) for n in names])
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
                       s=18, alpha=0.75, edgecolors="none")
    # two legends beside the axes: colour names the class, a hollow black marker the modality
    # (hollow, so no modality key reads as a class colour)
    from matplotlib.lines import Line2D

    def proxy(label, **kw):
        return Line2D([], [], ls="none", markersize=6, label=label, **kw)

    classes = ax.legend(handles=[proxy(c, marker="o", color=colour[c]) for c in sorted(shown)], title="class",
                        loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, fontsize=8, title_fontsize=8,
                        ncol=1 + (len(shown) - 1) // 20, frameon=False)
    ax.add_artist(classes)
    ax.legend(handles=[proxy(m, marker=MARKERS.get(m, "x"), color="black", markerfacecolor="none") for m in names], title="modality",
              loc="lower left", bbox_to_anchor=(1.02, 0.0), borderaxespad=0.0, fontsize=8, title_fontsize=8, frameon=False)
    more = f", the {len(shown)} largest of {len(uniq)}" if len(uniq) > len(shown) else ""
    ax.set_title(f"joint space, {split} split (PCA; colour = class{more})")
    ax.set_xlabel("PC 1")
    ax.set_ylabel("PC 2")
    return fig


def projection(run: str | Path, split: str, path: str | Path, max_points: int = 4000, max_classes: int = 10, seed: int = 0) -> Path | None:
    """2-D PCA of the joint space: colour = class (the ``max_classes`` largest), marker = modality."""
    from mmx.eval.runs import load_embeddings

    fig = projection_figure(load_embeddings(run, split), split, max_points, max_classes, seed)
    return None if fig is None else _save_and_close(fig, path)
