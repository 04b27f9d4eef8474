"""Plots people read: legends beside the curves, epochs across stages, heatmap text contrast,
a class legend on the projection. Checked on the figures themselves (drawn, not saved)."""

import itertools

import matplotlib
import numpy as np
import pytest

from mmx.eval import plots

matplotlib.use("Agg")

MODS = ("text", "image", "audio", "video")
PAIRS = [f"{a}->{b}" for a, b in itertools.permutations(MODS, 2)]
BLOCKS = [f"{a}-{b}" for a, b in itertools.combinations(MODS, 2)]


def staged_records(stages=3, epochs=4):
    """metrics.jsonl of a multi-stage run: an untrained epoch 0, then epochs 1..N in every stage,
    each stage closed by a record with its name; 26 loss series and 12 per-pair recalls."""
    out = [{"epoch": 0, "loss_val": 3.0, "recall/mean@10": 0.1}]
    for s in range(1, stages + 1):
        for e in range(1, epochs + 1):
            r = {"epoch": e, "stage": s, "loss_train": 3 - 0.1 * e, "loss_val": 3.1 - 0.1 * e, "seconds": 0.1,
                 "recall/mean@1": 0.1 * e, "recall/mean@10": 0.2 * e, "val/mAP@50": 0.15 * e, "batch/items": 64}
            for b in BLOCKS:
                for head in ("loss_train", "loss_val"):
                    r[f"{head}/cls/{b}"] = 2.0 / e
                    r[f"{head}/triplet/{b}"] = 0.5 / e
            r.update({f"recall/{p}@10": 0.2 * e for p in PAIRS})
            out.append(r)
        out.append({"stage": s, "stage_name": f"classes {3 * s - 2}-{3 * s}", "best_epoch": epochs, "stage_seconds": 1.0})
    return out


def overlaps(a, b) -> bool:
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


def legends_clear_of_axes(fig):
    """Every legend of the figure lies outside every axes (no curve or point is covered)."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    axes = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
    legends = [leg for ax in axes for leg in [ax.get_legend(), *[a for a in ax.artists if isinstance(a, matplotlib.legend.Legend)]] if leg]
    assert legends
    for leg in legends:
        box = leg.get_window_extent(renderer)
        for ax in axes:
            assert not overlaps(box, ax.get_window_extent(renderer)), (leg.get_title().get_text(), ax.get_title(loc="left"))
    return legends


def test_multi_stage_epochs_count_on_and_stage_starts_are_marked():
    records = staged_records()
    xs, starts = plots.epoch_axis(records)
    assert xs == [0.0] + [float(x) for x in range(1, 13)]  # 0, then 1..12 over three stages of 4 epochs
    assert starts == [(0.5, "stage 1: classes 1-3"), (4.5, "stage 2: classes 4-6"), (8.5, "stage 3: classes 7-9")]
    # a run of one stage keeps its epochs and marks no stage
    single = [{"epoch": e, "loss_train": 1.0 / e} for e in (1, 2, 3)]
    assert plots.epoch_axis(single) == ([1.0, 2.0, 3.0], [])
    assert plots.epoch_axis([{"epoch": e, "stage": 1} for e in (1, 2)]) == ([1.0, 2.0], [])


def test_curves_run_left_to_right_and_stage_is_not_a_metric():
    records = staged_records()
    panels = dict(plots.curve_panels(records))
    assert all(not k.startswith("stage") for group in panels.values() for k, _ in group)
    for group in panels.values():
        for k, pts in group:
            x = [p[0] for p in pts]
            assert x == sorted(x) and len(set(x)) == len(x), k
    fig = plots.curves_figure(records, "stagewise")
    try:
        for ax in fig.axes:
            for line in ax.get_lines():
                x, y = (np.asarray(v, float) for v in line.get_data())
                if len(x) > 1 and np.isfinite(y).any() and line.get_linestyle() != ":":
                    assert (np.diff(x) > 0).all(), line.get_label()
            # the three stage starts are drawn as vertical lines on every panel
            assert sum(1 for line in ax.get_lines() if list(line.get_xdata()) in ([0.5, 0.5], [4.5, 4.5], [8.5, 8.5])) == 3
        assert "across stages" in fig.axes[-1].get_xlabel()
        texts = [t.get_text() for t in fig.axes[0].texts]
        assert "stage 2: classes 4-6" in texts
    finally:
        matplotlib.pyplot.close(fig)


def test_curve_legends_sit_beside_the_panels():
    records = staged_records()
    fig = plots.curves_figure(records, "stagewise")
    try:
        legends = legends_clear_of_axes(fig)
        entries = {t.get_text() for leg in legends for t in leg.get_texts()}
        # every loss part is named once (train and val share a colour, told apart by line style)
        assert {f"cls/{b}" for b in BLOCKS} <= entries and {"train", "val"} <= entries
        assert {f"recall/{p}@10" for p in PAIRS} <= entries
    finally:
        matplotlib.pyplot.close(fig)


def contrast(rgb1, rgb2) -> float:
    """WCAG 2 contrast ratio of two sRGB colours."""
    def lum(rgb):
        c = np.asarray(matplotlib.colors.to_rgb(rgb))
        c = np.where(c <= 0.03928, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
        return 0.2126 * c[0] + 0.7152 * c[1] + 0.0722 * c[2]
    hi, lo = sorted((lum(rgb1), lum(rgb2)), reverse=True)
    return (hi + 0.05) / (lo + 0.05)


@pytest.mark.parametrize("metric", ["R@10", "MedR"])
def test_heatmap_numbers_contrast_with_their_cells(metric):
    values = np.linspace(0, 1, 12) if metric == "R@10" else np.linspace(1, 40, 12)
    pairs = [{"query": q, "target": t, metric: float(v)} for (q, t), v in zip(itertools.permutations(MODS, 2), values)]
    fig = plots.heatmap_figure({"splits": {"test": {"pairs": pairs}}, "relevance": "class"}, "test", metric)
    try:
        ax = fig.axes[0]
        im = ax.images[0]
        texts = ax.texts
        assert len(texts) == 12
        colours = set()
        for t in texts:
            j, i = t.get_position()
            cell = im.cmap(im.norm(im.get_array()[int(i), int(j)]))
            colours.add(matplotlib.colors.to_hex(t.get_color()))
            # WCAG AA for normal text; white on viridis yellow is about 1.1
            assert contrast(t.get_color(), cell) >= 4.5, (t.get_text(), t.get_color())
        assert len(colours) == 2  # dark cells get light text and light cells dark text
    finally:
        matplotlib.pyplot.close(fig)


def test_projection_names_the_classes_in_a_legend_beside_it():
    rng = np.random.default_rng(0)
    classes = [f"class{i:03d}" for i in range(6)]
    data = {}
    for m in MODS:
        labels = np.array(classes * 5)
        data[m] = {"emb": rng.normal(size=(len(labels), 8)) + 3 * np.eye(8)[np.arange(len(labels)) % 6], "label": labels}
    fig = plots.projection_figure(data, "test")
    try:
        legends = {leg.get_title().get_text(): [t.get_text() for t in leg.get_texts()] for leg in legends_clear_of_axes(fig)}
        assert legends["class"] == classes
        assert legends["modality"] == list(MODS)
    finally:
        matplotlib.pyplot.close(fig)
    # more classes than shown: the title says how many are drawn
    fig = plots.projection_figure(data, "test", max_classes=4)
    try:
        assert "the 4 largest of 6" in fig.axes[0].get_title()
        legend = [a for a in fig.axes[0].artists if isinstance(a, matplotlib.legend.Legend)][0]
        assert len(legend.get_texts()) == 4
    finally:
        matplotlib.pyplot.close(fig)
