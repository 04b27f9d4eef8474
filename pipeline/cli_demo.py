"""``mmx demo``: the main job end to end on the embedded real dataset (see :mod:`mmx.pipeline.demo.run`)."""

from __future__ import annotations

import click


@click.command("demo")
@click.option("--out", default="mmx-demo", show_default=True, type=click.Path(file_okay=False),
              help="Folder for the demo's fetched media, cache, runs and comparison.")
@click.option("--quick", is_flag=True, help="Few epochs per run (for tests); every stage still runs.")
@click.option("--per-class", type=click.IntRange(min=1), metavar="N",
              help="Only the first N items of each modality, split and class (a quick look; tests). Default: all.")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--progress/--no-progress", default=True, show_default=True)
def demo_cmd(out, quick, per_class, seed, progress):
    """Fetch, extract, train (paper 000's three settings, EAO, CVS), evaluate and compare on real media.

    \b
    The embedded dataset: MNIST digits, spoken digits (FSDD), sentences about digits in four
    languages and moving-digit clips, classes 0-9. Everything goes under --out; a rerun
    reuses what is done.
    """
    import warnings

    from mmx.pipeline.demo.run import run_demo

    with warnings.catch_warnings():
        # training's warnings (feature scale, small val split) as one indented line each,
        # not with the demo's source line under them
        warnings.showwarning = lambda message, category, *_: click.echo(f"    {category.__name__}: {message}")
        run_demo(out, quick=quick, seed=seed, log=click.echo, progress=progress, per_class=per_class)


COMMANDS = [demo_cmd]
