"""eao with its CPU defaults learns every modality pair of real media well above chance.

The embedded digits set (pipeline/demo/data: MNIST digits, spoken digits, sentences, moving-digit
clips; 10 classes) fetched and extracted as ``mmx demo`` does, then ``--preset eao-cpu`` on all
four modalities, evaluated on its val and test splits. Chance is computed from the labels (R@10
exactly, mAP from random rankings). About 4 minutes on two cores: extraction 2.5, training and evaluation 1-2.
"""

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))


@pytest.fixture(scope="module")
def digits_cache(tmp_path_factory):
    from mmx.pipeline.demo.run import Layout, extract_stage, fetch_stage

    layout = Layout(tmp_path_factory.mktemp("digits"))
    fetched = fetch_stage(layout, lambda s: None, progress=False)
    extract_stage(layout, fetched.layout.manifest, lambda s: None, progress=False)
    return layout.cache


@pytest.mark.slow
def test_eao_cpu_defaults_learn_every_pair_of_real_media_well_above_chance(digits_cache, tmp_path):
    import bench_eao_cpu

    run, _ = bench_eao_cpu.train_one("eao-cpu", "eao-cpu", [], str(digits_cache), "digits", 1, tmp_path)
    held = bench_eao_cpu.pair_table(run, "val")  # items never trained on; the train split's speakers
    assert len(held) == 12  # every ordered pair of text, image, audio, video
    for r in held:
        # well above: at least half-way from chance to 1 for R@10 (chance is ~0.7 here), 3x chance for mAP
        assert r["R@10"] >= r["chance R@10"] + (1 - r["chance R@10"]) / 2, r
        assert r["mAP"] >= 3 * r["chance mAP"], r
    # test: its audio is a speaker never heard in training, the hard case for a fixed log-mel front end
    test = bench_eao_cpu.pair_table(run, "test")
    for r in test:
        assert r["mAP"] >= 2.5 * r["chance mAP"] and r["R@10"] >= r["chance R@10"], r
    mean = {k: np.mean([r[k] for r in test]) for k in ("R@10", "chance R@10", "mAP", "chance mAP")}
    assert mean["R@10"] >= mean["chance R@10"] + (1 - mean["chance R@10"]) / 2 and mean["mAP"] >= 4 * mean["chance mAP"]
