"""``mmx demo``: the main job end to end on the embedded real dataset (see :mod:`mmx.pipeline.demo.run`)."""

from __future__ import annotations

import click

from mmx.pipeline.cli_output import console
from mmx.pipeline.options import progress_option, quiet_option


@click.command("demo")
@click.option("--out", default="mmx-demo", show_default=True, type=click.Path(file_okay=False),
              help="Folder for the demo's fetched media, cache, runs and comparison.")
@click.option("--quick", is_flag=True, help="Few epochs per run (for tests); every stage still runs.")
@click.option("--per-class", type=click.IntRange(min=1), metavar="N", show_default="all",
              help="Only the first N items of each modality, split and class (a quick look; tests).")
@click.option("--seed", default=0, type=int, help="Seed of every run.")
@progress_option()
@quiet_option()
def demo_cmd(out, quick, per_class, seed, progress):
    """Fetch, extract, train (paper 000's three settings, EAO, CVS), evaluate and compare on real media.

    \b
    The embedded dataset: MNIST digits, spoken digits (FSDD), sentences about digits in four
    languages and moving-digit clips, classes 0-9. Everything goes under --out; a rerun
    reuses what is done.
    """
    from mmx.pipeline.demo.run import run_demo

    con = console()
    done = run_demo(out, quick=quick, seed=seed, log=con.line, progress=progress and not con.quiet, per_class=per_class)
    con.summary(f"demo finished in {done['seconds']:.0f}s: {len(done['runs'])} runs compared in "
                f"{done['layout'].compare / 'compare.md'}")


COMMANDS = [demo_cmd]
