"""``mmx index build``: an approximate index of a run's gallery (see :mod:`mmx.eval.ann` and
:mod:`mmx.pipeline.ranking`, which ``mmx search --index`` and ``mmx serve`` rank through)."""

from __future__ import annotations

import click

from mmx.pipeline.cli_output import console
from mmx.pipeline.ranking import index_folder


@click.group("index")
def index_group():
    """Approximate nearest-neighbour indexes of a run's galleries (FAISS IVF-Flat)."""


@index_group.command("build")
@click.argument("run", type=click.Path(file_okay=False, exists=True))
@click.option("--split", default="test", help="Which of RUN's embedded splits is the gallery.")
@click.option("--gallery", type=click.Path(dir_okay=False, exists=True), help="A gallery written by 'mmx embed --manifest ... -o' instead.")
@click.option("--target", default="", show_default="every modality", help="Gallery modalities, as 'mmx search --target'.")
@click.option("--nlist", type=click.IntRange(min=1), help="Cells of the inverted file (default about 4 sqrt(rows)).")
@click.option("--on-disk", is_flag=True, help="Fill it a shard at a time into one memory-mapped .ivfdata file (galleries larger than memory).")
@click.pass_context
def build_cmd(ctx, run, split, gallery, target, nlist, on_disk):
    """Build the index 'mmx search RUN --index ann' uses for this gallery (same --split/--gallery/--target).

    \b
    Examples:
      mmx index build runs/RUN
      mmx index build runs/RUN --target image
    """
    from mmx.eval import ann
    from mmx.pipeline.cli_search import _gallery

    con = console(ctx)
    targets = [t.strip() for t in target.split(",") if t.strip()] or None
    g = _gallery(run, split, targets, gallery)["emb"]
    index = ann.build(g, index_folder(run), nlist=nlist, on_disk=on_disk, log=con.line)
    con.summary(f"wrote {index.path}: {index.meta['n']} rows in {index.meta['nlist']} cells, "
                f"nprobe {index.meta['nprobe']} ('mmx search {run} --index ann' uses it)")


COMMANDS = [index_group]
