"""``mmx demo``: the main job on an embedded default, end to end, on a fresh machine.

Until the embedded real-media default lands, this runs the whole stage-two path on a
synthetic cache in the real schema (and says so): synthesize -> train -> eval.
"""

from __future__ import annotations

from pathlib import Path

import click


@click.command("demo")
@click.option("--out", default="mmx-demo", show_default=True, type=click.Path(file_okay=False),
              help="Folder for the demo's cache and runs.")
@click.option("--strategy", default="joint", show_default=True, help="Strategy to train.")
@click.option("--epochs", default=60, show_default=True, type=int)
@click.option("--seed", default=0, show_default=True, type=int)
def demo_cmd(out, strategy, epochs, seed):
    """Run synthesize -> train -> eval on a synthetic cache and print the results."""
    from mmx.cache.synthesize import SyntheticConfig, synthesize
    from mmx.pipeline.cli import main
    from mmx.train.config import TrainConfig
    from mmx.train.loop import train

    out = Path(out)
    click.echo("mmx demo: this runs on a SYNTHETIC feature cache (class-structured random features in the")
    click.echo("real cache schema), not on real media; it exercises cache -> train -> eval end to end.\n")
    syn = SyntheticConfig(dataset="demo", classes=50, items={"text": 1000, "image": 1000, "audio": 400, "video": 400},
                          dims={"text": 64, "image": 128, "audio": 32, "video": 48}, tokens=None, seed=seed)
    stores = synthesize(out / "cache", syn)
    for m, s in stores.items():
        click.echo(f"  cache {m.value:5s} {s.n_items:5d} items x {s.dim:3d}-d  {s.path}")
    cfg = TrainConfig(strategy=strategy, dataset="demo", cache=str(out / "cache"), out=str(out / "runs"),
                      epochs=epochs, batch_size=50, lr=1e-3, seed=seed)
    click.echo(f"\ntraining strategy {strategy!r} on {', '.join(cfg.modalities)}")
    run = train(cfg, log=click.echo)
    click.echo("")
    main.main(args=["eval", str(run)], standalone_mode=False)


COMMANDS = [demo_cmd]
