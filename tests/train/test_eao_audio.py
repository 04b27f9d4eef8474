"""Everything at Once's trainable audio path (paper 001 Sec. 4.1): the encoder, the shifts."""

import json

import numpy as np
import pytest
import torch

from mmx.cache.modality import Modality
from mmx.cache.synthesize import SyntheticConfig, synthesize
from mmx.train import checkpoint, loop
from mmx.train.audio_encoder import DavenetEncoder, shift_tokens, tokens_per_second
from mmx.train.config import TrainConfig
from mmx.train.data import load_train_data
from mmx.train.strategies import get_strategy

MODS = ["text", "audio", "video"]
DIMS = {"text": 16, "audio": 12, "video": 20}
DAVENET = {"token_dim": 32, "depth": 1, "heads": 2, "audio_encoder": "davenet", "audio_dim": 24}


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    root = tmp_path_factory.mktemp("audio")
    # token_rate 1.0 per second; 3-9 audio tokens so that shifts of up to 2 tokens show
    synthesize(root, SyntheticConfig(classes=20, alignment="instance", missing=0.1, items={m: 240 for m in MODS},
                                     dims=DIMS, tokens=(3, 9), noise=0.5))
    return root


def cfg(cache, tmp_path, **kw):
    base = dict(strategy="eao", cache=str(cache), modalities=MODS, alignment="instance", out=str(tmp_path / "runs"),
                epochs=4, patience=4, batch_size=32, lr=3e-3, embed_dim=32, dropout=0.0, options=dict(DAVENET))
    return TrainConfig(**{**base, **kw})


def strategy_for(cache, tmp_path, **options):
    data = load_train_data(str(cache), "synthetic", Modality.parse_list(MODS), ["train", "test"], tokens=True)
    c = cfg(cache, tmp_path, options={**DAVENET, **options})
    assert get_strategy("eao").check(c) == []
    return get_strategy("eao")(c, data, torch.device("cpu")), data


def test_encoder_shapes_masks_and_padding_with_variable_lengths():
    torch.manual_seed(0)
    enc = DavenetEncoder(12, 20).eval()
    lengths = [5, 2, 1, 0]
    x = torch.randn(4, 5, 12)
    valid = torch.arange(5)[None] < torch.tensor(lengths)[:, None]
    out = enc(x * valid[..., None] + 7.0 * ~valid[..., None], valid)  # garbage in the padding
    assert out.shape == (4, 5, 20)
    assert (out[~valid] == 0).all()  # padded positions come out zero
    for i, n in enumerate(lengths):
        if n:  # each row alone, unpadded, gives the same outputs: nothing leaks from the padding
            alone = enc(x[i:i + 1, :n], torch.ones(1, n, dtype=torch.bool))
            assert torch.allclose(out[i, :n], alone[0], atol=1e-5)
    # the time convolutions see neighbours: changing frame 0 changes frame 1's output
    y = x.clone()
    y[0, 0] += torch.randn(12)  # (a constant would vanish in the per-frame normalisation)
    assert not torch.allclose(enc(y, valid)[0, 1], out[0, 1])


def test_token_rates_read_from_store_attributes():
    assert tokens_per_second(1.0) == 1.0 and tokens_per_second("1 per second") == 1.0
    assert tokens_per_second("2 per second") == 2.0 and tokens_per_second("1 per window (0.5 s)") == 2.0
    assert tokens_per_second("1 per second (fps)") == 1.0
    assert tokens_per_second("1 per item") is None and tokens_per_second(None) is None


def test_shift_tokens_stay_within_bounds_and_the_item():
    rng = np.random.default_rng(0)
    lengths = np.array([0, 1, 3, 10, 100] * 200)
    s = shift_tokens(lengths, 4, rng)
    assert (s >= 0).all() and (s < np.maximum(lengths, 1)).all() and (s[lengths <= 1] == 0).all()
    long = lengths == 100
    assert set(np.where(s[long] > 50, s[long] - 100, s[long])) == set(range(-4, 5))  # every shift in [-4, 4], no other
    assert (shift_tokens(lengths, 0, rng) == 0).all()


def _rows_as_items(batch_audio, tokens, offsets):
    """For each present row of a batch's audio: (item, shift) with the row's tokens equal to the
    item's tokens read from ``shift`` cyclically; asserts such an item exists."""
    x, valid, present = batch_audio[0], batch_audio[1], batch_audio[2]
    found = []
    for row in np.flatnonzero(present.numpy()):
        n = int(valid[row].sum())
        seq = x[row, :n]
        hits = [(i, s) for i in range(len(offsets) - 1) if offsets[i + 1] - offsets[i] == n
                for s in range(n) if torch.equal(seq, tokens[offsets[i]:offsets[i + 1]].roll(-s, 0))]
        assert len(hits) == 1, row
        found.append(hits[0] + (n,))
    return found


def test_audio_is_shifted_in_training_only_and_within_bounds(cache, tmp_path):
    strategy, data = strategy_for(cache, tmp_path, audio_shift_seconds=2.0)
    assert strategy.audio_shift == 2  # 2 s at the synthetic store's 1 token/s
    split = data.splits["train"]
    f = split.features[Modality.AUDIO]
    tokens, offsets = f.tokens, f.offsets.numpy()
    batch = next(iter(strategy.batches(split, 1, train=True)))
    shifts = [(s if s <= n // 2 else s - n, n) for _, s, n in _rows_as_items(batch["audio"], tokens, offsets)]
    assert all(abs(s) <= 2 or n <= 4 for s, n in shifts)  # within 2 tokens (modulo short items)
    assert sum(s != 0 for s, _ in shifts) > len(shifts) // 2  # most rows moved
    other = next(iter(strategy.batches(split, 1, train=True)))
    assert all(torch.equal(a, b) for a, b in zip(batch["audio"][:3], other["audio"][:3]))  # the epoch's seed decides
    held = next(iter(strategy.batches(split, 1, train=False)))  # held-out batches read every item from its start
    assert all(s == 0 for _, s, _ in _rows_as_items(held["audio"], tokens, offsets))
    emb_rows = strategy._inputs(split, {Modality.AUDIO: np.arange(8)})["audio"]  # what embed() reads
    assert all(s == 0 for _, s, _ in _rows_as_items(emb_rows, tokens, offsets))
    unshifted, _ = strategy_for(cache, tmp_path, audio_shift_seconds=0.0)
    plain = next(iter(unshifted.batches(split, 1, train=True)))
    assert all(s == 0 for _, s, _ in _rows_as_items(plain["audio"], tokens, offsets))


def test_gradients_reach_the_encoder(cache, tmp_path):
    strategy, data = strategy_for(cache, tmp_path)
    model = strategy.build_model()
    assert isinstance(model.encoders["audio"], DavenetEncoder) and model.token_proj["audio"][0].fc.in_features == 24
    out = strategy.step(model, next(iter(strategy.batches(data.splits["train"], 1, train=True))))
    out["loss"].backward()
    grads = {n: p.grad for n, p in model.named_parameters() if n.startswith("encoders.audio.")}
    assert grads and all(g is not None and torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads.values())
    frozen, _ = strategy_for(cache, tmp_path, audio_encoder="none")
    assert not len(frozen.build_model().encoders)  # the default keeps the cached tokens as they are


def test_davenet_learns_above_chance(cache, tmp_path):
    run = loop.train(cfg(cache, tmp_path, val_fraction=0.25, epochs=6, patience=6))
    s = json.loads((run / "metrics.json").read_text())
    # ~50 val groups: chance R@10 is about 1/5
    for pair in ("audio->text", "text->audio", "audio->video", "video->audio"):
        assert s["final"][f"recall/{pair}@10"] > 0.7, pair
    assert s["final"]["recall/text->audio+video@10"] > 0.7


class Killed(Exception):
    pass


def test_resume_keeps_the_encoder_and_ends_bit_identical(cache, tmp_path, monkeypatch):
    full = loop.train(cfg(cache, tmp_path / "a", epochs=3, patience=3))
    weights = checkpoint.load(full / checkpoint.LAST)["model"]
    assert any(k.startswith("encoders.audio.") for k in weights)
    save_last, calls = checkpoint.save_last, []

    def dying_save_last(*args, **kwargs):
        save_last(*args, **kwargs)
        calls.append(1)
        if len(calls) == 2:
            raise Killed

    monkeypatch.setattr(checkpoint, "save_last", dying_save_last)
    with pytest.raises(Killed):
        loop.train(cfg(cache, tmp_path / "b", epochs=3, patience=3))
    monkeypatch.setattr(checkpoint, "save_last", save_last)
    part = next((tmp_path / "b" / "runs").iterdir())
    resumed = loop.train(cfg(cache, tmp_path / "b", epochs=3, patience=3), resume=part)
    again = checkpoint.load(resumed / checkpoint.LAST)["model"]
    assert set(again) == set(weights) and all(torch.equal(weights[k], again[k]) for k in weights)


def test_options_are_checked_and_a_store_without_a_rate_is_not_shifted(cache, tmp_path):
    check = get_strategy("eao").check
    problems = check(cfg(cache, tmp_path, options={**DAVENET, "audio_encoder": "vggish", "audio_dim": 0, "audio_shift_seconds": -1}))
    assert len(problems) == 3 and all("options.audio_" in p for p in problems)
    assert any("needs audio" in p for p in check(cfg(cache, tmp_path, modalities=["text", "video"])))
    data = load_train_data(str(cache), "synthetic", Modality.parse_list(MODS), ["train"], tokens=True)
    data.meta[Modality.AUDIO] = {**data.meta[Modality.AUDIO], "backbone": {**data.meta[Modality.AUDIO]["backbone"], "token_rate": None}}
    with pytest.warns(UserWarning, match="not shifted"):
        strategy = get_strategy("eao")(cfg(cache, tmp_path), data, torch.device("cpu"))
    assert strategy.audio_shift == 0
    data.meta[Modality.AUDIO]["backbone"]["token_rate"] = "2 per second"
    assert get_strategy("eao")(cfg(cache, tmp_path), data, torch.device("cpu")).audio_shift == 8  # 4 s (the default) x 2/s
