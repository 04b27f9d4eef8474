"""A run is sized to the machine before anything loads: refused in one line naming what fits,
unless forced; the batch never exceeds the train split; short epochs train by steps."""

import json

import numpy as np
import pytest
from click.testing import CliRunner

from mmx.cache.synthesize import SyntheticConfig, synthesize
from mmx.eval.runs import read_jsonl
from mmx.pipeline.cli import main
from mmx.train import data as data_mod
from mmx.train import sizing
from mmx.train.config import resolve
from mmx.train.fusion import EverythingAtOnce
from mmx.train.loop import train
from mmx.train.samplers import ClassAlignedSampler
from mmx.train.strategies import get_strategy

GIB = 2**30
EAO = get_strategy("eao")


@pytest.fixture(scope="module")
def token_cache(tmp_path_factory):
    root = tmp_path_factory.mktemp("cache")
    synthesize(root, SyntheticConfig(classes=8, items={m: 80 for m in ("text", "audio", "video")},
                                     dims={"text": 16, "audio": 8, "video": 12}, tokens=(2, 4)))
    return root


def shapes(train_units=240, holdout_units=60, tokens=4.0):
    dims = {"text": 300, "video": 4096, "audio": 4096}
    return sizing.Shapes(dims=dims, tokens_mean={m: tokens for m in dims}, tokens_max={m: int(tokens) + 2 for m in dims},
                         items={m: 300 for m in dims}, token_rows={m: 300 * int(tokens) for m in dims},
                         train_units=train_units, holdout_units=holdout_units)


def paper(**kw):
    return resolve(["eao"], {"device": "cpu", **kw})


def test_parameters_are_counted_exactly_before_the_model_exists():
    cfg = resolve(["eao-cpu"], {"modalities": ["text", "video", "audio"]})
    sh = shapes()
    o = {**EAO.option_defaults(), **cfg.options}
    real = EverythingAtOnce(sh.dims, token_dim=o["token_dim"], embed_dim=cfg.embed_dim, depth=o["depth"], heads=o["heads"],
                            mlp_dim=o["mlp_dim"])
    assert EAO.footprint(cfg, sh, 64).params == sum(p.numel() for p in real.parameters())
    # the paper's size, counted on the meta device without allocating it, against the layers by hand
    d, e, h = 4096, 6144, 4096
    gated = lambda i, o: i * o + o + o * o + o  # noqa: E731 - GatedLinear: fc and gate
    tokens = sum(gated(D, d) + 2 * d for D in sh.dims.values())  # projection + LayerNorm per modality
    block = 2 * 2 * d + (d * 3 * d + 3 * d) + (d * d + d) + (d * h + h) + (h * d + d)
    assert EAO.footprint(paper(), sh, 2240).params == tokens + d + block + 3 * gated(d, e)  # + the masking token


def test_the_trainable_audio_encoder_is_counted():
    """options.audio_encoder: davenet adds its CNN's parameters exactly, and its activations
    (over the padded audio tokens) to the step's memory."""
    from mmx.train.audio_encoder import DavenetEncoder

    cfg = resolve(["eao-cpu"], {"modalities": ["text", "video", "audio"]})
    dav = resolve(["eao-cpu"], {"modalities": ["text", "video", "audio"]}, ["options.audio_encoder=davenet", "options.audio_dim=128"])
    sh = shapes()
    o = {**EAO.option_defaults(), **dav.options}
    real = EverythingAtOnce({**sh.dims, "audio": 128}, encoders={"audio": DavenetEncoder(sh.dims["audio"], 128)},
                            token_dim=o["token_dim"], embed_dim=dav.embed_dim, depth=o["depth"], heads=o["heads"], mlp_dim=o["mlp_dim"])
    with_cnn, without = EAO.footprint(dav, sh, 64), EAO.footprint(cfg, sh, 64)
    assert with_cnn.params == sum(p.numel() for p in real.parameters())
    # the CNN, less what the audio projection no longer reads (4096-d in, 128-d now; token_dim 256 out)
    assert with_cnn.params - without.params == sum(p.numel() for p in DavenetEncoder(4096, 128).parameters()) - (4096 - 128) * 256
    assert with_cnn.train_bytes > without.train_bytes and with_cnn.step_flops > without.step_flops
    wider = resolve(["eao-cpu"], {"modalities": ["text", "video", "audio"]}, ["options.audio_encoder=davenet", "options.audio_dim=512"])
    assert EAO.footprint(wider, sh, 64).train_bytes > with_cnn.train_bytes


def test_estimates_grow_with_the_batch_and_the_batch_is_clipped_to_the_split():
    cfg = resolve(["eao-cpu"], {"modalities": ["text", "video", "audio"]})
    small, large = (sizing.estimate(resolve(["eao-cpu"], {"modalities": ["text", "video", "audio"], "batch_size": b}), EAO,
                                    shapes(train_units=4000), "cpu") for b in (128, 1024))
    assert large.train_bytes > 4 * small.train_bytes and large.step_seconds > 4 * small.step_seconds
    one = resolve(["eao-cpu"], {"modalities": ["text", "video", "audio"], "min_steps": 0})
    clipped = sizing.estimate(one, EAO, shapes(train_units=240), "cpu")
    assert (clipped.batch, clipped.steps_per_epoch) == (240, 1)  # 2240 asked for, 240 rows in the split
    assert sizing.estimate(cfg, EAO, shapes(train_units=240), "cpu").steps_per_epoch == 10  # eao-cpu's min_steps
    stepped = sizing.estimate(resolve(["eao-cpu"], {"modalities": ["text", "video", "audio"], "min_steps": 25}), EAO,
                              shapes(train_units=240), "cpu")
    assert stepped.steps_per_epoch == 25 and stepped.run_seconds > 10 * clipped.run_seconds / 2
    # whole passes: 1000 rows at batch 240 are 5 steps a pass, so min_steps 12 gives 3 passes
    assert sizing.estimate(resolve(["eao-cpu"], {"modalities": ["text", "video", "audio"], "min_steps": 12,
                                                 "batch_size": 240}), EAO, shapes(train_units=1000), "cpu").steps_per_epoch == 15


def test_paper_size_on_a_cpu_is_refused_naming_the_cpu_preset():
    cfg = paper(modalities=["text", "video", "audio"])
    line = sizing.refusal(cfg, EAO, shapes(), "cpu", 1, capacity=8 * GIB)
    assert line is not None and "\n" not in line
    assert "needs about" in line and "--force" in line and named_fix(line).startswith("--preset eao-cpu")
    fixed = apply(["eao"], {"modalities": ["text", "video", "audio"], "device": "cpu"}, [], named_fix(line))
    assert sizing.refusal(fixed, EAO, shapes(), "cpu", 1, capacity=8 * GIB) is None
    assert sizing.refusal(resolve(["eao-cpu"], {"modalities": ["text", "video", "audio"]}), EAO, shapes(), "cpu", 1,
                          capacity=8 * GIB) is None


def named_fix(line: str) -> str:
    return line.split(": use ", 1)[1].split(" (", 1)[0]


def apply(presets: list, overrides: dict, sets: list, flags: str):
    """The config a user gets by adding ``flags`` (as the refusal names them) to their command."""
    words = flags.split()
    presets, overrides, sets = list(presets), dict(overrides), list(sets)
    for flag, value in zip(words[::2], words[1::2]):
        if flag == "--preset":
            presets.append(value)
        elif flag == "--set":
            sets.append(value)
        else:
            overrides[flag[2:].replace("-", "_")] = int(value)
    return resolve(presets, overrides, sets)


@pytest.mark.parametrize("setting", [{"min_steps": 200}, {"epochs": 400}])
def test_a_run_over_the_cpu_time_budget_is_refused_naming_what_fits(monkeypatch, setting):
    given = {"modalities": ["text", "video", "audio"], **setting}
    cfg = resolve(["eao-cpu"], given)
    est = sizing.estimate(cfg, EAO, shapes(), "cpu", 1)
    monkeypatch.setattr(sizing, "CPU_BUDGET_S", est.run_seconds / 3)
    line = sizing.refusal(cfg, EAO, shapes(), "cpu", 1, capacity=1e15)
    assert "would take about" in line and "--force" in line
    fixed = apply(["eao-cpu"], given, [], named_fix(line))
    assert fixed != cfg and sizing.refusal(fixed, EAO, shapes(), "cpu", 1, capacity=1e15) is None


def test_cuda_is_sized_against_the_device_memory():
    cfg = paper(modalities=["text", "video", "audio"], device="cuda")
    big = sizing.estimate(cfg, EAO, shapes(train_units=100_000), "cuda")
    assert big.run_seconds == 0  # only memory is checked on a GPU
    assert sizing.refusal(cfg, EAO, shapes(train_units=100_000), "cuda", 1, capacity=1e15) is None
    line = sizing.refusal(cfg, EAO, shapes(train_units=100_000), "cuda", 1, capacity=16 * GIB)
    assert "where 16.0 GiB are available" in line and named_fix(line).startswith("--batch-size") and "eao-cpu" not in line
    fixed = apply(["eao"], {"modalities": ["text", "video", "audio"], "device": "cuda"}, [], named_fix(line))
    assert sizing.refusal(fixed, EAO, shapes(train_units=100_000), "cuda", 1, capacity=16 * GIB) is None


def test_the_cli_stops_before_loading_anything(token_cache, tmp_path, monkeypatch):
    def no_load(*a, **k):
        raise AssertionError("features loaded before the size check")

    monkeypatch.setattr(data_mod, "load_train_data", no_load)
    monkeypatch.setattr("mmx.train.prepare.load_train_data", no_load)
    monkeypatch.setattr(sizing, "available_bytes", lambda device: 2 * GIB)
    res = CliRunner().invoke(main, ["train", "--strategy", "eao", "--dataset", "synthetic", "--cache", str(token_cache),
                                    "--out", str(tmp_path / "runs"), "--device", "cpu"])
    assert res.exit_code != 0
    said = [line for line in res.output.splitlines() if "--preset eao-cpu" in line]
    assert len(said) == 1 and "--force" in said[0] and "where 2.0 GiB are available" in said[0], res.output
    assert not (tmp_path / "runs").exists()


def test_force_trains_past_the_refusal(token_cache, tmp_path, monkeypatch):
    monkeypatch.setattr(sizing, "available_bytes", lambda device: 1024.0)  # nothing fits
    args = ["train", "--preset", "eao-cpu", "--dataset", "synthetic", "--cache", str(token_cache), "--out", str(tmp_path),
            "--device", "cpu", "--epochs", "1", "--batch-size", "16", "--set", "embed_dim=32", "--set", "options.token_dim=32"]
    refused = CliRunner().invoke(main, args)
    assert refused.exit_code != 0 and "no smaller setting" in refused.output
    forced = CliRunner().invoke(main, args + ["--force"])
    assert forced.exit_code == 0, forced.output
    assert "warning: --force: eao needs about" in forced.output
    assert "size: " in forced.output and "parameters, batch 16" in forced.output


def test_the_batch_never_exceeds_the_train_split(token_cache, tmp_path):
    s = ClassAlignedSampler({"text": np.arange(240) % 10, "audio": np.arange(100) % 10}, batch_size=2240)
    assert (s.batch_size, len(s)) == (240, 1)
    rows, _ = next(iter(s))
    assert len(rows["text"]) == 240 and len(np.unique(rows["text"])) == 240  # each text item once, none repeated
    said = []
    cfg = resolve(["eao-cpu"], {"cache": str(token_cache), "dataset": "synthetic", "out": str(tmp_path), "device": "cpu",
                                "epochs": 1, "embed_dim": 32, "min_steps": 0}, ["options.token_dim=32"])
    run = train(cfg, warn=said.append)
    assert any("batch_size 2240 is more than the train split holds" in w and "--set min_steps=N" in w for w in said)
    line = read_jsonl(run / "metrics.jsonl")[1]
    assert line["batch/items"] < 80 and line["steps"] == 1


def test_short_epochs_train_by_steps(token_cache, tmp_path):
    cfg = resolve(["eao-cpu"], {"cache": str(token_cache), "dataset": "synthetic", "out": str(tmp_path), "device": "cpu",
                                "epochs": 2, "embed_dim": 32, "batch_size": 32, "min_steps": 7}, ["options.token_dim=32"])
    run = train(cfg)
    lines = read_jsonl(run / "metrics.jsonl")
    # 8 classes x ~56 train items: 2 steps per pass at 32 rows, so 4 whole passes reach 7 steps
    assert [ln["steps"] for ln in lines[1:]] == [8, 8]
    assert resolve([str(run / "config.yaml")]).min_steps == 7


def test_each_pass_of_an_epoch_draws_afresh(token_cache, tmp_path, monkeypatch):
    strategy = get_strategy("eao")
    seen, real = [], strategy.batches

    def recording(self, split, epoch, train):
        seen.append((epoch, train))
        return real(self, split, epoch, train)

    monkeypatch.setattr(strategy, "batches", recording)
    cfg = resolve(["eao-cpu"], {"cache": str(token_cache), "dataset": "synthetic", "out": str(tmp_path), "device": "cpu",
                                "epochs": 2, "embed_dim": 32, "batch_size": 32, "min_steps": 7}, ["options.token_dim=32"])
    train(cfg)
    # pass k of epoch e draws as epoch e + k * (MAX_EPOCHS + 1): a seed no other pass or epoch
    # uses, whatever the run's epoch count
    from mmx.train.config import MAX_EPOCHS

    stride = MAX_EPOCHS + 1
    assert [e for e, t in seen if t] == [1, 1 + stride, 1 + 2 * stride, 1 + 3 * stride, 2, 2 + stride, 2 + 2 * stride, 2 + 3 * stride]


def test_size_is_said_in_the_header(token_cache, tmp_path):
    lines = []
    cfg = resolve(["eao-cpu"], {"cache": str(token_cache), "dataset": "synthetic", "out": str(tmp_path), "device": "cpu",
                                "epochs": 1, "embed_dim": 32, "batch_size": 16}, ["options.token_dim=32"])
    train(cfg, log=lines.append)
    size = [ln for ln in lines if ln.startswith("size: ")]
    assert len(size) == 1 and "GiB at its peak" in size[0] and "thread(s)" in size[0]
    assert lines.index(size[0]) < min(i for i, ln in enumerate(lines) if ln.startswith("items: ") or ln.startswith("val split"))


@pytest.mark.slow
@pytest.mark.parametrize("size", ["medium", "wide", "davenet"])
def test_estimated_peak_is_within_a_quarter_of_the_measured_one(size):
    """A fresh process per measurement (tests/peakmem.py: growth of the peak resident set):
    three training steps, and the held-out loss and embedding pass."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    import bench_sizing

    for part, key in (("train", "train_est_mib"), ("hold", "hold_est_mib")):
        r = bench_sizing.measure(size, threads=1, steps=0, part=part)
        assert 0.75 <= r[key] / r["peak_mib"] <= 1.25, (part, json.dumps(r))
