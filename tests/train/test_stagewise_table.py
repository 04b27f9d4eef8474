"""Stage-wise class learning reports the thesis's Table 13 (stage-1 classes and the whole test split
after every stage) and, with rehearsal of earlier stages' classes, keeps what stage 1 learnt."""

import json

import pytest

from mmx.cache.synthesize import SyntheticConfig, synthesize
from mmx.train.config import resolve
from mmx.train.loop import train
from mmx.train.strategies import get_strategy


@pytest.fixture(scope="module")
def six_classes(tmp_path_factory):
    root = tmp_path_factory.mktemp("sw")
    synthesize(root, SyntheticConfig(classes=6, items={"text": 180, "image": 180}, dims={"text": 16, "image": 16}, tokens=None,
                                     noise=0.8))
    return root


def _run(root, tmp_path, rehearsal):
    cfg = resolve(["stagewise"], overrides={"dataset": "synthetic", "cache": str(root), "out": str(tmp_path / rehearsal),
                                            "epochs": 6, "device": "cpu", "threads": 1, "embed_dim": 32, "batch_size": 24},
                  sets=["options.classes_per_stage=2", f"options.rehearsal={rehearsal}"])
    lines = []
    run = train(cfg, log=lines.append, warn=lambda s: None)
    stages = [json.loads(x) for x in open(run / "metrics.jsonl") if '"stage_name"' in x]
    return lines, stages


def test_the_table_is_printed_and_stage_one_is_kept_with_rehearsal(six_classes, tmp_path):
    lines, stages = _run(six_classes, tmp_path, "seen")
    assert len(stages) == 3
    at = next(i for i, s in enumerate(lines) if s.startswith("stage-wise mAP@50 on test after every stage"))
    table = lines[at + 1 : at + 3 + 4]
    assert table[0].startswith("| eval on | query -> target | stage 1 (classes 1-2) | stage 2 (classes 3-4) | stage 3 (classes 5-6)")
    rows = [r for r in table[2:] if r.startswith("| stage-1 classes")]
    assert len(rows) == 2 and all(r.rstrip(" |").endswith("%") for r in rows)
    for pair in ("image->text", "text->image"):
        first, last = stages[0][f"map@50/stage1/{pair}"], stages[-1][f"map@50/stage1/{pair}"]
        assert last >= 0.8 * first, (pair, first, last)
        # the whole test split is served better once every class has been seen
        assert stages[-1][f"map@50/all/{pair}"] > stages[0][f"map@50/all/{pair}"]


def test_rehearsal_widens_the_classes_of_later_stages(six_classes):
    from mmx.train.prepare import prepare

    for rehearsal, second in (("seen", [0, 1, 2, 3]), ("none", [2, 3])):
        cfg = resolve(["stagewise"], overrides={"dataset": "synthetic", "cache": str(six_classes), "device": "cpu",
                                                "embed_dim": 8, "epochs": 1},
                      sets=["options.classes_per_stage=2", f"options.rehearsal={rehearsal}"])
        prep = prepare(cfg, warn=lambda s: None)
        assert prep.stages[1].classes == second and prep.stages[1].name == "classes 3-4"


def test_an_unknown_rehearsal_is_refused():
    cfg = resolve(["stagewise"], sets=["options.rehearsal=some"])
    assert any("options.rehearsal must be 'seen'" in p for p in get_strategy("stagewise").check(cfg))
