"""Hostile run folders and galleries: bounded reads, faults that lose nothing, writes that stay
inside the run, finite numbers; every refusal is one line naming the file."""

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import peakmem
from mmx.cache import files
from mmx.cache.synthesize import SyntheticConfig, synthesize
from mmx.eval import runs
from mmx.pipeline.cli import main
from mmx.train import checkpoint, normalize
from mmx.train.config import TrainConfig
from mmx.train.loop import train
from mmx.train.prepare import open_trained


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A finished two-epoch run folder with standardised features (copied by each test before it is tampered with)."""
    root = tmp_path_factory.mktemp("hostile")
    synthesize(root / "cache", SyntheticConfig(classes=4, items={"text": 32, "image": 32},
                                               dims={"text": 8, "image": 8}, tokens=None, noise=0.5))
    cfg = TrainConfig(cache=str(root / "cache"), out=str(root / "runs"), modalities=["text", "image"], epochs=2,
                      patience=5, batch_size=8, embed_dim=8, normalize="standardize")
    return train(cfg)


@pytest.fixture
def run(trained, tmp_path):
    dst = tmp_path / "run"
    shutil.copytree(trained, dst)
    return dst


def one_line_error(result) -> str:
    assert result.exit_code == 1, result.output
    lines = [x for x in result.output.strip().splitlines() if x.strip() and not x.startswith("warning: ")]
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "Traceback" not in result.output, result.output
    return lines[0]


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def resume(run, epochs=3):
    return invoke("train", "--resume", run, "--epochs", epochs, "--quiet")


def cli(*args, timeout=120):
    """``mmx ARGS`` in a fresh process (a hang is a failure, not a stuck test run)."""
    return subprocess.run([sys.executable, "-m", "mmx.pipeline.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "OMP_NUM_THREADS": "1"})


# -- every read is bounded --------------------------------------------------------------------------


@pytest.mark.parametrize("planted,command", [
    ("config.yaml", "eval"),
    ("last.safetensors", "resume"),
    ("checkpoint.safetensors", "embed"),
])
@pytest.mark.parametrize("kind", ["fifo", "devzero"])
def test_a_fifo_or_device_in_the_run_is_refused_at_once(run, planted, command, kind):
    """A FIFO waits forever for a writer, /dev/zero never ends: both refused before any read, naming the file."""
    (run / planted).unlink()
    if kind == "fifo":
        os.mkfifo(run / planted)
    else:
        os.symlink("/dev/zero", run / planted)
    args = {"eval": ["eval", run], "resume": ["train", "--resume", run, "--epochs", "3", "--quiet"],
            "embed": ["embed", run, "--text", "seven"]}[command]
    proc = cli(*args)
    err = [x for x in proc.stderr.strip().splitlines() if x.strip()]
    assert proc.returncode == 1 and len(err) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert planted in err[0] and ("FIFO" in err[0] or "character device" in err[0]), err[0]


def alias_bomb(levels: int) -> str:
    """The billion-laughs YAML: ``levels`` anchors each holding ten aliases of the one before (10**levels leaves)."""
    lines = ["options:", '  a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, levels + 1):
        lines.append(f"  a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 10) + "]")
    return "\n".join(lines) + "\n"


def test_the_824_byte_alias_bomb_is_small():
    assert len(alias_bomb(9).encode()) < 1000


@pytest.mark.parametrize("command", ["eval", "resume"])
def test_a_config_of_yaml_aliases_is_refused(run, command):
    """A few hundred bytes of aliases expand to 10**levels items; the run's config is refused, not expanded
    (4 levels here keeps the test cheap where the refusal is missing)."""
    kept = [x for x in (run / "config.yaml").read_text().splitlines() if not x.startswith("options:")]
    (run / "config.yaml").write_text("\n".join(kept) + "\n" + alias_bomb(4))
    line = one_line_error(invoke("eval", run) if command == "eval" else resume(run))
    assert "config.yaml" in line and "alias" in line


def test_a_config_with_a_python_tag_is_refused(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("strategy: !!python/name:os.system\n")
    with pytest.raises(ValueError, match="config.yaml.*tag"):
        files.read_yaml(path)
    path.write_text("name: !!binary aGVsbG8=\n")
    with pytest.raises(ValueError, match="tag"):
        files.read_yaml(path)


def test_an_oversized_config_is_refused_unread(tmp_path):
    path = tmp_path / "config.yaml"
    with open(path, "wb") as f:
        f.truncate(files.MAX_TEXT + 1)  # sparse: costs no disk
    with pytest.raises(ValueError, match="config.yaml.*bytes, over"):
        files.read_yaml(path)


def write_bomb_npz(path, rows: int, dim: int = 256) -> None:
    """An embeddings .npz whose ``emb`` inflates to rows x dim float32 zeros, written a chunk at a time."""
    from numpy.lib import format as npf

    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        with zf.open("emb.npy", "w", force_zip64=True) as f:
            npf.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False, "shape": (rows, dim)})
            block = np.zeros((4096, dim), np.float32).tobytes()
            for _ in range(rows // 4096):
                f.write(block)
        for name in ("label", "group", "id"):
            with zf.open(f"{name}.npy", "w") as f:
                np.lib.format.write_array(f, np.array([str(i % 4) for i in range(rows)]))


def test_a_zip_bomb_gallery_is_refused_before_it_inflates(run):
    """An embeddings file a few hundred KB long that inflates to 256 MiB: refused from its zip directory."""
    bomb = run / "embeddings" / "test" / "text.npz"
    write_bomb_npz(bomb, rows=262144)
    assert bomb.stat().st_size < 2 << 20
    base = peakmem.start()
    with pytest.raises(ValueError, match="text.npz.*decompressed"):
        runs.load_embeddings(run, "test")
    assert peakmem.growth_mib(base) < 64
    assert "text.npz" in one_line_error(invoke("eval", run))


def test_a_garbage_gallery_is_called_what_it_is(run, tmp_path):
    bad = tmp_path / "gallery.npz"
    bad.write_bytes(os.urandom(4096))
    line = one_line_error(invoke("search", run, "--gallery", bad, "--text", "x"))
    assert "gallery.npz" in line and "not a valid .npz" in line and "pickle" not in line
    with zipfile.ZipFile(bad, "w") as zf:  # an object array: a pickle inside
        with zf.open("emb.npy", "w") as f:
            np.lib.format.write_array(f, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    line = one_line_error(invoke("search", run, "--gallery", bad, "--text", "x"))
    assert "gallery.npz" in line and "object array" in line


# -- faults lose nothing ------------------------------------------------------------------------------


def metric_epochs(run):
    return [json.loads(x)["epoch"] for x in (run / "metrics.jsonl").read_text().splitlines()]


def test_a_torn_last_metrics_line_is_cut_back_on_resume(run):
    """A full disk tore the last line: resume drops it and continues; every line of the file is whole."""
    with open(run / "metrics.jsonl", "ab") as f:
        f.write(b'{"epoch": 3, "loss_val": 0.12, "note": "unterminat')
    assert [r["epoch"] for r in runs.read_jsonl(run / "metrics.jsonl")] == [0, 1, 2]
    result = resume(run)
    assert result.exit_code == 0, result.output
    assert metric_epochs(run) == [0, 1, 2, 3]


def test_a_bad_middle_metrics_line_names_the_file_and_line(run):
    lines = (run / "metrics.jsonl").read_text().splitlines()
    lines[1] = lines[1][:20]
    (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    line = one_line_error(resume(run))
    assert "metrics.jsonl, line 2" in line


def test_a_failed_append_is_cut_back_to_whole_lines(tmp_path, monkeypatch):
    path = tmp_path / "metrics.jsonl"
    runs.append_jsonl(path, {"epoch": 0})
    real_write = os.write

    def half_then_full(fd, data):
        real_write(fd, data[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(runs.os, "write", half_then_full)
    with pytest.raises(OSError) as info:
        runs.append_jsonl(path, {"epoch": 1, "loss": 0.5})
    assert info.value.filename == str(path)
    monkeypatch.undo()
    assert path.read_bytes() == b'{"epoch": 0}\n'


def test_a_full_disk_says_the_exact_resume_command_and_the_same_command_says_it_too(trained, tmp_path, monkeypatch):
    out = tmp_path / "runs"
    cache = trained.parent.parent / "cache"
    command = ["train", "--cache", cache, "--dataset", "synthetic", "--modalities", "text,image", "--epochs", "3",
               "--batch-size", "8", "--set", "embed_dim=8", "--out", out, "--name", "mine", "--quiet"]
    real_append, calls = runs.append_jsonl, []

    def full_on_third(path, obj):
        calls.append(obj)
        if len(calls) == 3:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real_append(path, obj)

    monkeypatch.setattr(runs, "append_jsonl", full_on_third)
    line = one_line_error(invoke(*command))
    monkeypatch.undo()
    assert f"mmx train --resume {out / 'mine'}" in line and "no space" in line
    again = one_line_error(invoke(*command))  # the same command does not start over the run
    assert f"mmx train --resume {out / 'mine'}" in again
    result = resume(out / "mine")
    assert result.exit_code == 0, result.output
    assert metric_epochs(out / "mine") == [0, 1, 2, 3]


def test_one_writer_per_run_folder(run):
    """A second writer (here: a lock held in this process) makes `mmx train --resume` stop at once, changing nothing."""
    before = (run / "metrics.jsonl").read_bytes()
    with runs.writer_lock(run, "another mmx train"):
        line = one_line_error(resume(run))
    assert "another mmx train" in line and "being written" in line and str(run) in line
    assert (run / "metrics.jsonl").read_bytes() == before


def test_a_killed_writer_leaves_no_lock(run):
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from mmx.eval import runs\n"
                               "with runs.writer_lock(sys.argv[1]):\n    print('held', flush=True); time.sleep(600)",
                               str(run)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert "being written" in one_line_error(resume(run))
        holder.send_signal(signal.SIGKILL)
        holder.wait(30)
        result = resume(run)
        assert result.exit_code == 0, result.output
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()


# -- no write leaves its folder ----------------------------------------------------------------------


def test_a_planted_eval_link_does_not_take_eval_outside_the_run(run, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "eval-class.json").write_text("precious")
    (run / "eval").symlink_to(elsewhere, target_is_directory=True)
    line = one_line_error(invoke("eval", run))
    assert "eval" in line and "symbolic link" in line
    assert sorted(p.name for p in elsewhere.iterdir()) == ["eval-class.json"]
    assert (elsewhere / "eval-class.json").read_text() == "precious"


def test_a_planted_embeddings_link_stops_a_resume_before_it_writes_there(run, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    shutil.move(str(run / "embeddings" / "test"), str(elsewhere))
    (run / "embeddings" / "test").symlink_to(elsewhere, target_is_directory=True)
    before = sorted((p.name, p.read_bytes()) for p in elsewhere.iterdir())
    line = one_line_error(resume(run))
    assert "symbolic link" in line and "test" in line
    assert sorted((p.name, p.read_bytes()) for p in elsewhere.iterdir()) == before


def test_a_planted_metrics_link_is_never_appended_through(run, tmp_path):
    """Resume replaces the link with the run's own file (a rename never follows it); an append refuses it."""
    elsewhere = tmp_path / "elsewhere.jsonl"
    shutil.move(str(run / "metrics.jsonl"), str(elsewhere))
    (run / "metrics.jsonl").symlink_to(elsewhere)
    with pytest.raises(ValueError, match="metrics.jsonl: a symbolic link"):
        runs.append_jsonl(run / "metrics.jsonl", {"epoch": 9})
    before = elsewhere.read_bytes()
    result = resume(run)
    assert result.exit_code == 0, result.output
    assert elsewhere.read_bytes() == before and not (run / "metrics.jsonl").is_symlink()
    assert metric_epochs(run) == [0, 1, 2, 3]


# -- numbers are finite -------------------------------------------------------------------------------


def set_stat(run, modality, name, value):
    obj = json.loads((run / normalize.FILE).read_text())
    obj["stats"][modality]["pooled"][name][0] = value
    (run / normalize.FILE).write_text(json.dumps(obj))


@pytest.mark.parametrize("name,value,says", [("std", float("nan"), "non-finite"), ("std", 0.0, "zero"),
                                             ("mean", float("inf"), "non-finite")])
def test_non_finite_normaliser_statistics_are_refused_at_load(run, name, value, says):
    set_stat(run, "text", name, value)
    with pytest.raises(ValueError, match=f"normalizer.json: text/pooled: {name}.*{says}"):
        open_trained(run)
    assert "normalizer.json" in one_line_error(invoke("embed", run, "--text", "seven"))


def rewrite_checkpoint(path, change):
    state = checkpoint.load(path)
    change(state["model"])
    checkpoint.save(path, state)


@pytest.mark.parametrize("name", [checkpoint.BEST, checkpoint.LAST])
def test_a_nan_weight_is_refused_with_the_file_named(run, name):
    def poison(model):
        key = next(k for k, t in model.items() if t.is_floating_point())
        model[key].view(-1)[0] = float("nan")

    rewrite_checkpoint(run / name, poison)
    with pytest.raises(checkpoint.CheckpointError, match=f"{name}: tensor model/.* non-finite"):
        checkpoint.load(run / name)
    line = one_line_error(resume(run) if name == checkpoint.LAST else invoke("embed", run, "--text", "x"))
    assert name in line and "non-finite" in line


def test_weights_of_another_dtype_are_refused_not_cast(run):
    import torch

    rewrite_checkpoint(run / checkpoint.BEST, lambda m: m.update({k: t.to(torch.float64) for k, t in m.items()
                                                                  if t.is_floating_point()}))
    with pytest.raises(ValueError, match="checkpoint.safetensors: the weights do not fit.*float64"):
        open_trained(run)


def test_a_nan_gallery_is_refused(run, tmp_path):
    path = run / "embeddings" / "test" / "image.npz"
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["emb"][3, 1] = np.nan
    np.savez(path, **arrays)
    line = one_line_error(invoke("eval", run))
    assert "image.npz" in line and "non-finite" in line
    gallery = tmp_path / "gallery.npz"
    np.savez(gallery, emb=arrays["emb"], id=arrays["id"], modality=np.array(["image"] * len(arrays["id"])),
             label=arrays["label"], uri=np.array([""] * len(arrays["id"])))
    line = one_line_error(invoke("search", run, "--gallery", gallery, "--text", "x"))
    assert "gallery.npz" in line and "non-finite" in line


# -- vague errors and tracebacks of the same files ---------------------------------------------------


def test_normaliser_statistics_of_another_length_name_the_file(run):
    obj = json.loads((run / normalize.FILE).read_text())
    for name in ("mean", "std"):
        obj["stats"]["text"]["pooled"][name] = obj["stats"]["text"]["pooled"][name][:-1]
    (run / normalize.FILE).write_text(json.dumps(obj))
    line = one_line_error(invoke("embed", run, "--text", "seven"))
    assert "normalizer.json" in line and "dimensions" in line


def test_deeply_nested_json_is_one_line(run):
    (run / normalize.FILE).write_text("[" * 200000)
    line = one_line_error(invoke("embed", run, "--text", "seven"))
    assert "normalizer.json" in line and "not valid JSON" in line


def test_a_gallery_of_another_dimension_is_refused_before_embedding(run, tmp_path):
    gallery = tmp_path / "gallery.npz"
    np.savez(gallery, emb=np.ones((3, 5), np.float32), id=np.array(list("abc")), modality=np.array(["image"] * 3),
             label=np.array(list("xyz")), uri=np.array([""] * 3))
    line = one_line_error(invoke("search", run, "--gallery", gallery, "--text", "x"))
    assert "gallery.npz" in line and "5 dimensions" in line


def test_weights_of_another_shape_name_the_file(run):
    rewrite_checkpoint(run / checkpoint.BEST, lambda m: m.update({k: t[..., :-1].clone() for k, t in m.items()
                                                                  if t.is_floating_point() and t.ndim == 2}))
    line = one_line_error(invoke("embed", run, "--text", "seven"))
    assert "checkpoint.safetensors" in line, line


def test_a_checkpoint_without_its_model_names_the_entry_and_the_file(run):
    state = checkpoint.load(run / checkpoint.BEST)
    del state["model"]
    checkpoint.save(run / checkpoint.BEST, state)
    line = one_line_error(invoke("embed", run, "--text", "seven"))
    assert "checkpoint.safetensors" in line and "holds no weights" in line, line


@pytest.mark.parametrize("value", ["-3", "0", "abc", "1e400", "[1, 2]"])
def test_a_bad_embed_dim_in_the_config_names_the_file_and_the_value(run, value):
    text = (run / "config.yaml").read_text()
    (run / "config.yaml").write_text("\n".join(f"embed_dim: {value}" if x.startswith("embed_dim:") else x
                                               for x in text.splitlines()) + "\n")
    line = one_line_error(invoke("embed", run, "--text", "seven"))  # eval reads embeddings only: no model, no embed_dim
    assert "config.yaml" in line and "embed_dim" in line, line


def test_out_naming_a_file_is_one_line(trained, tmp_path):
    (tmp_path / "afile").write_text("x")
    cache = Path(trained).parents[1] / "cache"
    line = one_line_error(invoke("train", "--cache", cache, "--dataset", "synthetic", "--modalities", "text,image",
                                 "--epochs", 1, "--out", tmp_path / "afile", "--quiet"))
    assert "afile" in line, line
