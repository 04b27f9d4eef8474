"""Training is not host-bound: no host synchronisation inside a step.

On CUDA a step that reads a value of a device tensor (``.item()``, ``bool(t)``, ``.tolist()``,
a boolean-mask index, ``nonzero``) or copies a host array with a plain ``torch.as_tensor``
makes the host wait until the device has drained, so a step of small heads costs the round
trip, not its kernels. On the CPU nothing waits, so these tests make every such call raise
while a training epoch or a held-out pass runs, except in the two places meant for it: the
start of a pass (the sampler draws the pass and copies its index arrays to the device once;
a held-out pass also embeds the split there) and the one read of the summed losses at its end. The same runs under
``torch.cuda.set_sync_debug_mode("error")`` on a GPU (``-m gpu``).
"""

import contextlib
import itertools

import numpy as np
import pytest
import torch

from mmx.cache.modality import Modality
from mmx.cache.synthesize import SyntheticConfig, synthesize
from mmx.train import loop
from mmx.train.config import TrainConfig
from mmx.train.data import Holdout, load_train_data
from mmx.train.optim import make_optimiser
from mmx.train.strategies import get_strategy


class HostSync(AssertionError):
    pass


class Guard:
    """Patches what reads device values or copies to the device synchronously; raises unless allowed."""

    def __init__(self, monkeypatch):
        self.allowed = 0
        self.monkeypatch = monkeypatch
        for name in ("item", "tolist", "numpy", "cpu", "__bool__", "__int__", "__float__", "__index__", "nonzero",
                     "masked_select"):
            self._forbid(torch.Tensor, name)
        for name in ("as_tensor", "tensor", "nonzero", "masked_select"):
            self._forbid(torch, name)
        getitem = torch.Tensor.__getitem__

        def checked(t, index):
            parts = index if isinstance(index, tuple) else (index,)
            if not self.allowed and any(isinstance(p, torch.Tensor) and p.dtype == torch.bool for p in parts):
                raise HostSync("indexing with a boolean mask (its row count is read from the device)")
            return getitem(t, index)

        monkeypatch.setattr(torch.Tensor, "__getitem__", checked)

    def _forbid(self, owner, name):
        original = getattr(owner, name)
        guard = self

        def forbidden(*args, **kwargs):
            if not guard.allowed:
                raise HostSync(f"{owner.__name__}.{name} inside a step")
            return original(*args, **kwargs)

        self.monkeypatch.setattr(owner, name, forbidden)

    @contextlib.contextmanager
    def allow(self):
        self.allowed += 1
        try:
            yield
        finally:
            self.allowed -= 1


def guarded_run(monkeypatch, strategy, runner, opt, held_out: bool = True):
    """A training epoch (and a held-out pass) of ``runner`` with host syncs forbidden inside steps."""
    guard = Guard(monkeypatch)

    def first_allowed(method):
        def wrapped(*args, **kwargs):
            it = iter(method(*args, **kwargs))
            with guard.allow():  # the pass is drawn and copied to the device here, once
                first = next(it, None)
            if first is not None:
                yield first
                yield from it
        return wrapped

    means = loop.PartMeans.means

    def read_once(self, prefix):
        with guard.allow():  # the one read of the pass's summed losses
            return means(self, prefix)

    monkeypatch.setattr(strategy, "batches", first_allowed(strategy.batches))
    monkeypatch.setattr(strategy, "held_out", first_allowed(strategy.held_out))
    monkeypatch.setattr(loop.PartMeans, "means", read_once)
    out = runner.train_epoch(1, opt)
    if held_out:
        out.update(runner.held_out_loss(1))
    return out


@pytest.fixture(scope="module")
def class_cache(tmp_path_factory):
    root = tmp_path_factory.mktemp("cls")
    synthesize(root, SyntheticConfig(classes=12, items={"text": 120, "image": 96, "audio": 48, "video": 36},
                                     dims={"text": 12, "image": 16, "audio": 8, "video": 10}, tokens=None, noise=0.5))
    return root


@pytest.fixture(scope="module")
def instance_cache(tmp_path_factory):
    root = tmp_path_factory.mktemp("inst")
    synthesize(root, SyntheticConfig(classes=6, alignment="instance", missing=0.3, items={m: 60 for m in ("text", "image", "audio")},
                                     dims={"text": 12, "image": 16, "audio": 8}, tokens=None))
    return root


def setup(cache, strategy: str, modalities, alignment="class", **kw):
    cfg = TrainConfig(strategy=strategy, cache=str(cache), modalities=modalities, alignment=alignment, batch_size=8,
                      embed_dim=16, threads=1, **kw)
    data = load_train_data(str(cache), cfg.dataset, Modality.parse_list(modalities), [], tokens=get_strategy(strategy).needs_tokens,
                           need_labels=alignment == "class",
                           need_groups=alignment == "instance",
                           holdout=Holdout(cfg.holdout, cfg.val_fraction, cfg.test_fraction, cfg.seed))
    s = get_strategy(strategy)(cfg, data, torch.device("cpu"))
    torch.manual_seed(0)
    model = s.build_model()
    stages = s.stages()
    if stages[-1] is not None:
        s.begin_stage(model, stages[-1])  # a later stage: frozen parts, a stage's own batches
    opt, _ = make_optimiser(cfg, s.parameters(model))
    runner = loop.Runner(cfg, s, model, data.splits["train"], data.splits[cfg.holdout], None, torch.device("cpu"), lambda x: None)
    return s, runner, opt


MODS = ["text", "image", "audio", "video"]
CLASS_CASES = {
    "joint": ("joint", MODS, {}),
    "joint-class-positives": ("joint", MODS, {"options": {"positives": "class"}}),
    "roundrobin": ("roundrobin", MODS, {}),
    "cvs": ("cvs", MODS, {}),
    "cvs-train-as-served": ("cvs", ["text", "image", "audio"], {"options": {"train_as_served": True}}),
    "mcvs": ("mcvs", MODS, {}),
    "rvs": ("rvs", MODS, {}),
    "stagewise": ("stagewise", ["text", "image"], {"options": {"classes_per_stage": 4}}),
}
# eao (below, on token caches): every index of its fusion pass is built on the host from the
# lengths the strategy knows


@pytest.mark.parametrize("case", sorted(CLASS_CASES))
def test_class_aligned_steps_never_read_the_device(class_cache, monkeypatch, case):
    strategy, mods, kw = CLASS_CASES[case]
    s, runner, opt = setup(class_cache, strategy, mods, **kw)
    out = guarded_run(monkeypatch, s, runner, opt)
    assert np.isfinite(out["loss_train"]) and np.isfinite(out["loss_val"])


def test_instance_aligned_steps_with_absent_rows_never_read_the_device(instance_cache, monkeypatch):
    s, runner, opt = setup(instance_cache, "joint", ["text", "image", "audio"], alignment="instance")
    assert any(b["present"] for b in s.batches(runner.train_split, 1, train=True))  # some rows are absent
    out = guarded_run(monkeypatch, s, runner, opt)
    assert np.isfinite(out["loss_train"])


def test_the_guard_catches_a_sync_in_a_step(class_cache, monkeypatch):
    """The guard is real: a step that reads its loss (as logging per step would) fails."""
    s, runner, opt = setup(class_cache, "joint", MODS)
    step = s.step

    def logging_step(model, batch):
        out = step(model, batch)
        print(float(out["loss"]))
        return out

    monkeypatch.setattr(s, "step", logging_step)
    with pytest.raises(HostSync, match="__float__"):
        guarded_run(monkeypatch, s, runner, opt, held_out=False)


@pytest.mark.gpu
@pytest.mark.parametrize("case", sorted(CLASS_CASES))
def test_cuda_steps_never_synchronise(class_cache, case):
    strategy, mods, kw = CLASS_CASES[case]
    cuda_epoch_without_syncs(class_cache, strategy, mods, "class", kw)


@pytest.mark.gpu
def test_cuda_eao_steps_never_synchronise(token_cache):
    cache, alignment = token_cache
    cuda_epoch_without_syncs(cache, "eao", ["text", "audio", "video"], alignment, {"options": {"token_dim": 32, "heads": 4}})


def cuda_epoch_without_syncs(cache, strategy, mods, alignment, kw):
    """A training epoch on CUDA under ``set_sync_debug_mode("error")`` after the pass is drawn."""
    if not torch.cuda.is_available():
        pytest.skip("CUDA is not available here")
    cfg = TrainConfig(strategy=strategy, cache=str(cache), modalities=mods, alignment=alignment, batch_size=8, embed_dim=16,
                      device="cuda", **kw)
    dev = torch.device("cuda")
    data = load_train_data(str(cache), cfg.dataset, Modality.parse_list(mods), [], tokens=get_strategy(strategy).needs_tokens,
                           need_labels=alignment == "class", need_groups=alignment == "instance", device=dev,
                           holdout=Holdout(cfg.holdout, cfg.val_fraction, cfg.test_fraction, cfg.seed))
    s = get_strategy(strategy)(cfg, data, dev)
    model = s.build_model().to(dev)
    opt, _ = make_optimiser(cfg, s.parameters(model))
    it = iter(s.batches(data.splits["train"], 1, train=True))
    first = next(it)  # the pass is drawn and copied here
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for batch in itertools.chain([first], it):
            out = s.step(model, batch)
            opt.zero_grad(set_to_none=True)
            out["loss"].backward()
            opt.step()
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_all_pairs_in_one_computation_equal_the_pair_by_pair_loss_and_gradients():
    from mmx.train.losses import info_nce, pairwise_info_nce

    g = torch.Generator().manual_seed(1)
    base = {m: torch.randn(9, 6, generator=g) for m in MODS}
    embs = {m: e.clone().requires_grad_() for m, e in base.items()}
    out = pairwise_info_nce(embs, 0.07)
    ref = {m: e.clone().requires_grad_() for m, e in base.items()}
    by_pair = {f"loss/{a}-{b}": info_nce(ref[a], ref[b], 0.07) for a, b in itertools.permutations(MODS, 2)}
    assert sorted(k for k in out if k != "loss") == sorted(by_pair)
    for k, v in by_pair.items():
        assert float(out[k]) == pytest.approx(float(v), rel=1e-5)
    out["loss"].backward()
    torch.stack(list(by_pair.values())).mean().backward()
    for m in MODS:
        torch.testing.assert_close(embs[m].grad, ref[m].grad, rtol=1e-5, atol=1e-7)


def _held_out_batch_by_batch(s, runner, epoch):
    """The held-out loss as the loop computed it before: the step on every held-out batch."""
    runner.model.eval()
    parts = loop.PartMeans()
    with torch.no_grad():
        for batch in s.batches(runner.hold, epoch, train=False):
            parts.add(s.step(runner.model, batch))
    return parts.means("val")


@pytest.mark.parametrize("case", sorted(CLASS_CASES) + ["instance"])
def test_held_out_loss_from_one_embedding_pass_equals_batch_by_batch(class_cache, instance_cache, case):
    if case == "instance":
        s, runner, opt = setup(instance_cache, "joint", ["text", "image", "audio"], alignment="instance")
    else:
        strategy, mods, kw = CLASS_CASES[case]
        s, runner, opt = setup(class_cache, strategy, mods, **kw)
    runner.train_epoch(1, opt)  # trained a little, with dropout: eval mode must switch it off
    got, want = runner.held_out_loss(3), _held_out_batch_by_batch(s, runner, 3)
    assert got.keys() == want.keys() and len(got) > 1
    for k in want:
        assert got[k] == pytest.approx(want[k], rel=1e-5, abs=1e-6), k


def test_cvs_blocks_in_one_pass_equal_block_by_block(class_cache):
    """The batched loss of a CVS step equals eq. 3.1.7 taken block by block, term by term."""
    from mmx.train.triplet import classification_loss, semihard_triplet_loss

    s, runner, _ = setup(class_cache, "cvs", MODS)
    batch = next(iter(s.batches(runner.train_split, 1, train=True)))
    model = runner.model.eval()
    out = s.step(model, batch)
    (m1, m2, m3), (g1, g2, g3) = s.opt["margins"], s.opt["gammas"]
    total = 0.0
    for i, j in s.stage.blocks:
        (xi, yi), (xj, yj) = batch[i], batch[j]
        fi, fj = model.attend(i, j, model.heads[i](xi), model.heads[j](xj))
        inter = 0.5 * (semihard_triplet_loss(fi, yi, fj, yj, m3) + semihard_triplet_loss(fj, yj, fi, yi, m3))
        t = g1 * semihard_triplet_loss(fi, yi, fi, yi, m1, same_set=True) + g2 * semihard_triplet_loss(fj, yj, fj, yj, m2, same_set=True) + g3 * inter
        c = 0.5 * (classification_loss(model.classifier(fi), yi) + classification_loss(model.classifier(fj), yj))
        assert float(out[f"loss/triplet/{i}-{j}"]) == pytest.approx(float(t), rel=1e-5)
        assert float(out[f"loss/cls/{i}-{j}"]) == pytest.approx(float(c), rel=1e-5)
        total += float(t) + float(c)
    assert float(out["loss"]) == pytest.approx(total, rel=1e-5) and len(s.stage.blocks) == 6


@pytest.fixture(scope="module", params=["class", "instance"])
def token_cache(request, tmp_path_factory):
    """2-4 tokens per item; the instance-aligned one has clips that lack a modality."""
    root = tmp_path_factory.mktemp(f"tok-{request.param}")
    synthesize(root, SyntheticConfig(classes=6, alignment=request.param, missing=0.3 if request.param == "instance" else 0.0,
                                     items={m: 60 for m in ("text", "audio", "video")}, dims={"text": 12, "audio": 8, "video": 10},
                                     tokens=(2, 4)))
    return root, request.param


def test_eao_steps_never_read_the_device(token_cache, monkeypatch):
    """EAO, class- and instance-aligned (masking tokens, terms with no row): the real tokens, the
    attention layouts and the loss's row masks all come from host arrays."""
    cache, alignment = token_cache
    s, runner, opt = setup(cache, "eao", ["text", "audio", "video"], alignment=alignment, options={"token_dim": 32, "heads": 4})
    out = guarded_run(monkeypatch, s, runner, opt)
    assert np.isfinite(out["loss_train"]) and np.isfinite(out["loss_val"])


@pytest.mark.parametrize("case", sorted(CLASS_CASES))
def test_drawing_a_class_aligned_pass_reads_nothing_from_the_device(class_cache, monkeypatch, case):
    """A pass's start copies its index arrays to the device, and reads nothing back: the class
    labels the sampler draws from are kept on the host when the data is loaded."""
    strategy, mods, kw = CLASS_CASES[case]
    s, runner, opt = setup(class_cache, strategy, mods, **kw)
    Guard(monkeypatch)
    for epoch in (1, 2):
        assert next(iter(s.batches(runner.train_split, epoch, train=True))) is not None
