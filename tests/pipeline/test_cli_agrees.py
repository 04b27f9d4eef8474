"""The CLI agrees with itself: warnings once on one line, --quiet prints one line, JSON only with
--json, help shows what options mean and their defaults, required options are marked, shared
options have one type and default."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from mmx.pipeline.cli import main


def _ok(result):
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result


def _commands(group: click.Group = main, path: tuple = ()):
    """``(path, command)`` for every command under ``group``, groups included."""
    for name, cmd in sorted(group.commands.items()):
        yield (*path, name), cmd
        if isinstance(cmd, click.Group):
            yield from _commands(cmd, (*path, name))


def _help(path) -> str:
    return _ok(CliRunner().invoke(main, [*path, "--help"], terminal_width=200)).output


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A small synthetic cache (dataset ``tiny``) whose val split is small enough to earn warnings."""
    root = tmp_path_factory.mktemp("agrees") / "cache"
    _ok(CliRunner().invoke(main, ["cache", "synthesize", "--cache", str(root), "--dataset", "tiny", "--classes", "4",
                                  "--items", "text=48,image=48", "--tokens", "none", "--quiet"]))
    return root


@pytest.fixture(scope="module")
def runs(cache):
    """Two tiny runs of ``tiny``: ``joint`` and ``joint2``."""
    out = cache.parent / "runs"
    for name in ("joint", "joint2"):
        _ok(CliRunner().invoke(main, ["train", "--cache", str(cache), "--dataset", "tiny", "--epochs", "2",
                                      "--batch-size", "8", "--set", "embed_dim=8", "--out", str(out), "--name", name,
                                      "--quiet", "--device", "cpu"]))
    return out / "joint", out / "joint2"


# -- warnings ------------------------------------------------------------------------------
def test_each_warning_prints_once_on_one_line_without_its_source(monkeypatch, tmp_path):
    """A caution raised through warnings.warn, the run log and the warn callback, twice each: one line."""
    import mmx.train.loop as loop

    def training(cfg, log, resume=None, warn=None, force=False):
        log("training tiny")
        for _ in range(2):
            warnings.warn("feature scale: text is 40x image", UserWarning, stacklevel=2)
            log("warning: feature scale: text is 40x image")
            warn("the val split holds 3 items")
        return tmp_path / "run"

    monkeypatch.setattr(loop, "train", training)
    r = _ok(CliRunner().invoke(main, ["train", "--dataset", "tiny", "--cache", str(tmp_path)]))
    lines = r.output.splitlines()
    assert lines.count("warning: feature scale: text is 40x image") == 1
    assert lines.count("warning: the val split holds 3 items") == 1
    assert ".py:" not in r.output and "UserWarning" not in r.output
    assert r.stderr.count("warning: ") == 2 and "warning: " not in r.stdout
    assert lines[-1] == str(tmp_path / "run")
    quiet = _ok(CliRunner().invoke(main, ["train", "--dataset", "tiny", "--cache", str(tmp_path), "--quiet"]))
    assert quiet.output.splitlines() == [str(tmp_path / "run")]


def test_a_real_run_repeats_no_warning_and_quiet_prints_only_the_run(cache, tmp_path):
    args = ["train", "--cache", str(cache), "--dataset", "tiny", "--epochs", "2", "--batch-size", "8",
            "--set", "embed_dim=8", "--out", str(tmp_path), "--device", "cpu"]
    r = _ok(CliRunner().invoke(main, args))
    warned = [line for line in r.output.splitlines() if "warning" in line.lower()]
    assert warned, "the tiny val split earns a warning"
    assert all(line.startswith("warning: ") for line in warned), warned
    assert len(warned) == len(set(warned)), warned
    assert ".py:" not in r.output
    quiet = _ok(CliRunner().invoke(main, [*args, "--quiet"]))
    assert len(quiet.output.splitlines()) == 1 and Path(quiet.output.strip()).is_dir()


def test_the_display_is_restored_after_a_command(cache):
    before = warnings.showwarning
    _ok(CliRunner().invoke(main, ["cache", "ls", "--cache", str(cache)]))
    assert warnings.showwarning is before


# -- --quiet: one summary line ---------------------------------------------------------------
def test_quiet_prints_one_line_for_every_command_that_reports(cache, runs, tmp_path):
    joint, joint2 = runs
    text = tmp_path / "m.csv"
    text.write_text("id,modality,uri,text,label,split\nt0,text,,a dog,dog,train\nt1,text,,a cat,cat,test\n")
    cli = CliRunner()
    for argv in (
        ["eval", str(joint), "--device", "cpu"],
        ["compare", str(joint), str(joint2), "--device", "cpu"],
        ["cache", "synthesize", "--cache", str(tmp_path / "c"), "--classes", "2", "--items", "text=8,image=8"],
        ["extract", str(text), "--modality", "text", "--backbone", "bow", "--dataset", "d", "--cache",
         str(tmp_path / "c"), "--workers", "0"],
        ["fetch", str(text), "--out", str(tmp_path / "data")],
    ):
        loud = _ok(cli.invoke(main, argv))
        quiet = _ok(cli.invoke(main, [*argv, "--quiet"]))
        assert len(quiet.output.splitlines()) == 1, (argv, quiet.output)
        assert quiet.output.split()[0] in loud.output, argv


def test_quiet_demo_prints_its_summary_only(monkeypatch, tmp_path):
    from mmx.pipeline.demo import run as demo_run

    def demo(out, log, progress, **kwargs):
        assert not progress
        log("1/5 fetch")
        log("warning: the val split holds 3 items")
        warnings.warn("small val split")
        return {"seconds": 3.0, "runs": {"a": 1, "b": 2}, "layout": demo_run.Layout(Path(out))}

    monkeypatch.setattr(demo_run, "run_demo", demo)
    r = _ok(CliRunner().invoke(main, ["demo", "--out", str(tmp_path), "--quiet"]))
    assert r.output.splitlines() == [f"demo finished in 3s: 2 runs compared in {tmp_path / 'compare' / 'compare.md'}"]


def test_errors_still_show_with_quiet(tmp_path):
    r = CliRunner().invoke(main, ["eval", str(tmp_path / "nope"), "--quiet"])
    assert r.exit_code == 1 and "run folder not found" in r.output


# -- --json ----------------------------------------------------------------------------------
def test_machine_output_only_with_json(cache, runs, tmp_path):
    joint, joint2 = runs
    text = tmp_path / "m.csv"
    text.write_text("id,modality,uri,text,label,split\nt0,text,,a dog,dog,train\n")
    cli = CliRunner()
    extract = ["extract", str(text), "--modality", "text", "--backbone", "bow", "--dataset", "d",
               "--cache", str(tmp_path / "c"), "--workers", "0", "--no-progress"]
    commands = {
        "extract": (extract, lambda d: Path(d["store"]).is_dir() and d["failed"] == 0),
        "train": (["train", "--cache", str(cache), "--dataset", "tiny", "--epochs", "1", "--batch-size", "8",
                   "--set", "embed_dim=8", "--out", str(tmp_path / "runs"), "--device", "cpu"],
                  lambda d: Path(d["run"]).is_dir() and "best_epoch" in d),
        "eval": (["eval", str(joint), "--device", "cpu"], lambda d: d["relevance"] == "class" and "splits" in d),
        "compare": (["compare", str(joint), str(joint2), "--device", "cpu"], lambda d: len(d["tables"]) > 0),
        "cache info": (["cache", "info", "tiny/text", "--cache", str(cache)], lambda d: d["dataset"] == "tiny"),
        "fetch": (["fetch", str(text), "--out", str(tmp_path / "data")], lambda d: d["totals"]["ok"] == 1),
    }
    for name, (argv, check) in commands.items():
        plain = _ok(cli.invoke(main, argv))
        assert not any(line.lstrip().startswith(("{", "[")) for line in plain.output.splitlines()), (name, plain.output)
        machine = _ok(cli.invoke(main, [*argv, "--json"]))
        assert check(json.loads(machine.stdout)), name
    ls = _ok(cli.invoke(main, ["cache", "ls", "--cache", str(cache), "--json"]))
    assert [json.loads(line)["modality"] for line in ls.stdout.splitlines()] == ["image", "text"]


# -- help ------------------------------------------------------------------------------------
def test_every_option_says_what_it_means_and_shows_its_default():
    for path, cmd in _commands():
        for p in cmd.params:
            if not isinstance(p, click.Option) or p.hidden or p.name == "help":
                continue
            assert p.help, f"mmx {' '.join(path)} {p.opts[0]}: no help text"
            if p.default not in (None, False, ()) and not p.is_flag and p.show_default is not False:
                assert f"{p.opts[-1]}" in _help(path) and "[default: " in _help(path), (path, p.name)


def test_train_help_states_defaults_and_what_batch_size_counts():
    text = " ".join(_help(["train"]).split())
    for option in ("--epochs", "--lr", "--patience", "--batch-size"):
        after = text.split(f"{option} INTEGER RANGE " if option != "--lr" else "--lr FLOAT RANGE ", 1)[1]
        assert "[default: (the strategy's preset)" in after.split(" --", 1)[0], option
    batch = text.split("--batch-size INTEGER RANGE ", 1)[1].split(" --", 1)[0]
    assert "Items of each modality" in batch and "Classes" not in batch


def test_shown_defaults_are_the_defaults_used():
    extract = " ".join(_help(["extract"]).split())
    assert "--device TEXT Where the model runs: auto (CUDA when present), cpu, cuda or cuda:N. [default: auto]" in extract
    assert "--batch-size INTEGER RANGE Items per forward pass of the backbone. [default: 32; x>=1]" in extract


# -- required options ------------------------------------------------------------------------
def test_required_options_are_marked_and_enforced():
    for path in (["extract"], ["cache", "import"]):
        text = " ".join(_help(path).split())
        assert "[required]" in text.split("--dataset TEXT ", 1)[1].split(" --", 1)[0], path
    assert "[required unless --resume, --from or a preset file names it]" in " ".join(_help(["train"]).split())
    r = CliRunner().invoke(main, ["extract", "m.csv", "--modality", "text"])
    assert r.exit_code == 2 and "Missing option '--dataset'" in r.output


def test_train_never_falls_back_to_synthetic_data(tmp_path):
    r = CliRunner().invoke(main, ["train", "--cache", str(tmp_path), "--strategy", "joint"])
    assert r.exit_code == 2 and "Missing option '--dataset'" in r.output and "synthetic" in r.output
    preset = tmp_path / "mine.yaml"
    preset.write_text("dataset: absent\n")
    for extra in (["--preset", str(preset)], ["--set", "dataset=absent"]):
        r = CliRunner().invoke(main, ["train", "--cache", str(tmp_path), "--modalities", "text,image", *extra])
        assert r.exit_code == 1 and "no text features of dataset 'absent'" in r.output, extra


# -- one type and default per shared option ----------------------------------------------------
@pytest.mark.parametrize("option", ["--cache", "--device", "--threads", "--dataset", "--progress", "--quiet", "--json",
                                    "--allow-root"])
def test_a_shared_option_has_one_type_and_default(option):
    seen = {}
    for path, cmd in _commands():
        for p in cmd.params:
            if isinstance(p, click.Option) and option in p.opts:
                seen[" ".join(path)] = (json.dumps(p.type.to_info_dict(), sort_keys=True), p.default, p.is_flag, p.multiple,
                                        p.show_default if option != "--dataset" else None)
    assert len(seen) >= 2, seen
    assert len(set(seen.values())) == 1, seen


def test_the_device_default_is_auto_everywhere():
    for path, cmd in _commands():
        for p in cmd.params:
            if isinstance(p, click.Option) and "--device" in p.opts:
                assert p.default == "auto", path


def test_eval_and_compare_name_a_folder_of_runs(runs):
    folder = runs[0].parent
    for argv in (["eval", str(folder)], ["compare", str(folder), str(runs[1])]):
        r = CliRunner().invoke(main, argv)
        assert r.exit_code == 2 and "is a folder of runs, not a run folder; give one of them" in r.output, argv
