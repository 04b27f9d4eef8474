"""Batch samplers: class-aligned (paper 000 Sec. III-A) and instance-aligned (paper 001)."""

import numpy as np
import pytest
import torch

from mmx.train.samplers import ClassAlignedSampler, InstanceAlignedSampler, group_table, make_sampler


def test_class_sampler_distinct_classes_matching_items_and_epoch_length():
    classes = {"text": np.arange(60) % 6, "audio": np.arange(18) % 6}
    s = ClassAlignedSampler(classes, batch_size=4, seed=1)
    assert len(s) == 15  # ceil(60 / 4): one pass over the largest modality
    n = 0
    for rows, chosen in s:
        n += 1
        assert len(set(chosen.tolist())) == len(chosen) == 4  # never a class twice in a batch
        for m, r in rows.items():
            assert (classes[m][r] == chosen).all()  # one item of each modality per class, of that class
    assert n == 15


def test_class_sampler_oversamples_the_smaller_modality_evenly():
    # audio has 3 items per class, text 10: audio items are cycled, each used equally often
    classes = {"text": np.arange(60) % 6, "audio": np.arange(18) % 6}
    s = ClassAlignedSampler(classes, batch_size=6, seed=0)  # every class in every batch
    counts = {m: np.zeros(len(c), int) for m, c in classes.items()}
    for rows, _ in s:
        for m, r in rows.items():
            np.add.at(counts[m], r, 1)
    assert counts["text"].min() == counts["text"].max() == 1  # the largest modality: once per epoch
    # 10 draws per class over 3 audio items: a reshuffled queue gives each item 3 or 4 draws
    assert counts["audio"].sum() == 60 and counts["audio"].min() >= 3 and counts["audio"].max() <= 4


def test_class_sampler_skips_unlabelled_and_classes_a_modality_lacks():
    classes = {"text": np.array([0, 1, 2, -1, -1]), "image": np.array([1, 2, 2, 3])}
    s = ClassAlignedSampler(classes, batch_size=8, seed=0)
    # 2 classes; 8 rows asked, but the largest modality has 3 drawable items: never more rows than that
    assert s.classes.tolist() == [1, 2] and s.n_classes == 2 and s.batch_size == 3
    for rows, chosen in s:
        assert set(chosen.tolist()) <= {1, 2}
    with pytest.raises(ValueError, match="no class has items in every modality"):
        ClassAlignedSampler({"text": np.array([0]), "image": np.array([1])}, 4)


def test_group_table_first_items_and_absence():
    names, first, members = group_table({"text": np.array(["b", "a", "c"]), "video": np.array(["c", "", "a", "a"])})
    assert names.tolist() == ["a", "b", "c"]
    assert first["text"].tolist() == [1, 0, 2]
    assert first["video"].tolist() == [2, -1, 0]  # "b" has no video; "" is no group


def test_instance_sampler_visits_each_group_once_and_masks_absent():
    groups = {
        "text": np.array(["g0", "g1", "g2", "g3", "g4"]),
        "audio": np.array(["g1", "g3", "g0"]),
        "video": np.array(["g0", "g2", "g2", "g9"]),  # g2 has two clips' worth of video; g9 only video
    }
    s = InstanceAlignedSampler(groups, batch_size=2, seed=3)
    names = s.names
    seen = []
    for rows, chosen in s:
        for m, r in rows.items():
            for row, g in zip(r, names[chosen]):
                if row >= 0:
                    assert groups[m][row] == g  # the item belongs to the row's group
                else:
                    assert g not in set(groups[m])  # -1 only where the group lacks the modality
        seen += names[chosen].tolist()
    # g4 (text only) and g9 (video only) take part in no term and are skipped; the rest once each
    assert sorted(seen) == ["g0", "g1", "g2", "g3"]
    assert len(s) == 2
    # both video items of g2 get drawn over epochs
    picks = set()
    for seed in range(20):
        for rows, chosen in InstanceAlignedSampler(groups, 4, seed):
            picks |= {int(r) for r, g in zip(rows["video"], names[chosen]) if g == "g2"}
    assert picks == {1, 2}


def test_instance_sampler_needs_two_modalities_somewhere_and_make_sampler_rejects_bad_alignment():
    with pytest.raises(ValueError, match="no group has items"):
        InstanceAlignedSampler({"text": np.array(["a"]), "audio": np.array(["b"])}, 2)
    with pytest.raises(ValueError, match="alignment must be"):
        make_sampler(None, [], "diagonal", 2, 0)


def _per_class_draws(sampler, passes: int, m: str, classes: np.ndarray) -> dict:
    """Items of modality ``m`` drawn for each class over ``passes`` passes, in draw order."""
    draws: dict = {}
    for _ in range(passes):
        for rows, _ in sampler:
            for r in rows[m]:
                draws.setdefault(int(classes[r]), []).append(int(r))
    return draws


def test_class_queues_are_runs_of_permutations_carried_across_passes():
    """Each (modality, class) draws from a queue of successive shuffles of its items: every block
    of n draws (n items of that class) holds each item once, also across a pass boundary."""
    classes = {"text": np.arange(70) % 7, "audio": np.repeat(np.arange(7), [1, 2, 3, 4, 5, 2, 3])}
    s = ClassAlignedSampler(classes, batch_size=5, seed=4)
    draws = _per_class_draws(s, 3, "audio", classes["audio"])
    for k, seq in draws.items():
        members = sorted(np.flatnonzero(classes["audio"] == k).tolist())
        n = len(members)
        whole = len(seq) // n * n
        for i in range(0, whole, n):
            assert sorted(seq[i : i + n]) == members  # a complete shuffle, item by item
        assert len(set(seq[whole:])) == len(seq) - whole  # the started shuffle repeats nothing


def test_class_sampler_is_seeded_and_draws_whole_passes_as_arrays():
    classes = {"text": np.arange(300) % 20, "image": np.arange(200) % 20}
    a, b = ClassAlignedSampler(classes, 16, seed=3).plan(), ClassAlignedSampler(classes, 16, seed=3).plan()
    assert len(a) == len(b) == 19 and all(np.array_equal(a.rows[m], b.rows[m]) for m in classes)
    assert np.array_equal(a.keys, b.keys) and a.rows["text"].shape == (19 * 16,)
    c = ClassAlignedSampler(classes, 16, seed=4).plan()
    assert not np.array_equal(a.rows["text"], c.rows["text"])
    # iterating yields the same batches as the plan of a sampler with the same seed
    for k, (rows, keys) in enumerate(ClassAlignedSampler(classes, 16, seed=3)):
        assert all(np.array_equal(rows[m], a.batch(k)[m]) for m in classes) and np.array_equal(keys, a.keys[k])


def test_a_pass_on_the_device_is_one_copy_with_absent_rows_readable():
    groups = {"text": np.array(["a", "b", "c", "d", "e", "f"]), "audio": np.array(["a", "c", "e", "f"]),
              "image": np.array(["b", "c"])}  # b has no audio, a no image: -1 there
    epoch = InstanceAlignedSampler(groups, batch_size=3, seed=0).plan()
    got = list(epoch.on_device("cpu"))
    assert [len(h["text"]) for h, _ in got] == [3, 2]  # a, b, c, e, f: every group with two modalities
    assert any((h["audio"] < 0).any() for h, _ in got) and any((h["image"] < 0).any() for h, _ in got)
    for host, dev in got:
        for m in groups:
            assert dev[m].dtype == torch.int64 and np.array_equal(dev[m].numpy(), np.maximum(host[m], 0))
    # every batch's device rows are views of one tensor per modality (no copy per step)
    assert got[0][1]["text"].untyped_storage().data_ptr() == got[1][1]["text"].untyped_storage().data_ptr()
    limited = list(ClassAlignedSampler({"text": np.arange(40) % 4, "image": np.arange(40) % 4}, 8, seed=0).plan().on_device("cpu", 2))
    assert len(limited) == 2


def test_max_per_class_keeps_one_item_of_a_class_per_batch():
    classes = {"text": np.arange(240) % 10, "image": np.arange(240) % 10}
    s = ClassAlignedSampler(classes, batch_size=128, seed=0, max_per_class=1)
    assert s.composition == {"batch/items": 10, "batch/classes": 10, "batch/per_class_min": 1, "batch/per_class_max": 1}
    assert len(s) == 24  # the epoch still covers the largest modality once
    for rows, chosen in s:
        for m, r in rows.items():
            assert sorted(classes[m][r].tolist()) == list(range(10))
    # many classes: the cap does not bind, batch_size does
    assert ClassAlignedSampler({"a": np.arange(400) % 200}, batch_size=128, max_per_class=1).composition["batch/items"] == 128
