"""Messages a first run meets: why instance relevance prints n/a, what --set accepts,
the hub offline path."""

import pytest
from click.testing import CliRunner

from mmx.cache.synthesize import SyntheticConfig, synthesize
from mmx.extract import hub
from mmx.pipeline.cli import main
from mmx.train.config import TrainConfig
from mmx.train.loop import train


def test_eval_with_instance_relevance_on_class_data_says_why(tmp_path):
    synthesize(tmp_path / "c", SyntheticConfig(classes=4, items={"text": 40, "image": 40}, dims={"text": 8, "image": 8},
                                               tokens=None))
    run = train(TrainConfig(cache=str(tmp_path / "c"), out=str(tmp_path / "runs"), modalities=["text", "image"],
                            epochs=1, batch_size=8, embed_dim=8, device="cpu"))
    r = CliRunner().invoke(main, ["eval", str(run), "--relevance", "instance"])
    assert r.exit_code == 0, r.output
    assert "note: every figure is n/a" in r.output and "--relevance class" in r.output
    r = CliRunner().invoke(main, ["eval", str(run)])
    assert "note:" not in r.output


def test_extract_list_shows_each_backbones_options():
    r = CliRunner().invoke(main, ["extract", "--list"])
    assert r.exit_code == 0
    assert "Options (--set KEY=VALUE" in r.output
    assert "  logmel: " in r.output and "token_seconds=" in r.output
    assert "  frames: " in r.output or "fps=" in r.output


def _failing(seen):
    def load(weights, **kwargs):
        seen.update(kwargs)
        raise OSError("We couldn't connect to the hub")
    return load


def test_unreachable_hub_goes_to_the_cache_at_once_and_advises_what_applies(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(hub, "hub_reachable", lambda timeout=2.0: False)
    seen = {}
    with pytest.raises(FileNotFoundError) as err:
        hub.hub_call(_failing(seen), "some-org/some-model")
    assert seen == {"local_files_only": True}
    assert "unreachable" in str(err.value) and "HF_HUB_OFFLINE" not in str(err.value)


def test_offline_variable_set_is_the_only_case_that_suggests_unsetting_it(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub, "hub_reachable", lambda timeout=2.0: pytest.fail("no probe when offline is set"))
    with pytest.raises(FileNotFoundError, match="unset HF_HUB_OFFLINE"):
        hub.hub_call(_failing({}), "some-org/some-model")


def test_a_local_folder_is_never_probed(monkeypatch, tmp_path):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(hub, "hub_reachable", lambda timeout=2.0: pytest.fail("a local folder needs no network"))
    assert hub.hub_call(lambda w, **k: (w, k), str(tmp_path)) == (str(tmp_path), {})


def test_training_curves_show_the_mean_first_every_pair_and_no_repeated_colour():
    from mmx.eval.plots import curve_panels, distinct_colours

    mods = ("text", "image", "audio", "video")
    pairs = [f"{a}->{b}" for a in mods for b in mods if a != b]
    records = [{"epoch": e, "loss_train": 1.0 / e, "loss_val": 1.1 / e, "recall/mean@10": 0.1 * e,
                "recall/mean@1": 0.05 * e, "batch/items": 128,
                **{f"recall/{p}@10": 0.1 * e for p in pairs}, **{f"recall/{p}@1": 0.01 for p in pairs}}
               for e in (1, 2, 3)]
    panels = dict(curve_panels(records))
    assert [k for k, _ in panels["loss"]] == ["loss_train", "loss_val"]
    summary = [k for k, _ in panels["mean recall and summary metrics"]]
    assert summary[:2] == ["recall/mean@1", "recall/mean@10"]
    assert sorted(k for k, _ in panels["R@10 per pair"]) == sorted(f"recall/{p}@10" for p in pairs)  # all 12
    assert not any(k.startswith("batch/") for group in panels.values() for k, _ in group)
    for n in (12, 20, 30):
        colours = distinct_colours(n)
        assert len({tuple(c) for c in colours}) == n
