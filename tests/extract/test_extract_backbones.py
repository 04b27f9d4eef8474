"""Every registered backbone extracts real media through a tiny (or the packaged) variant.

Hub backbones are tiny random models built from a config, saved to a temporary folder
and loaded through ``--weights DIR``, the same ``from_pretrained`` call a hub id takes.
"""

import functools

import numpy as np
import pytest
import torch

from cuda_launch import launch_behind_another
from tiny_backbones import TINY_OF

from mmx.extract.backbones import BACKBONES, DEFAULT_BACKBONE, build_encoder, get_backbone, resolve_options
from mmx.cache.modality import Modality


@pytest.fixture(scope="session")
def tiny_hub(tmp_path_factory):
    """Tiny random transformers models (and their processors) saved like hub snapshots."""
    import transformers as T

    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("hub")
    T.ResNetModel(T.ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic")).save_pretrained(root / "resnet")
    T.ConvNextImageProcessor(size={"shortest_edge": 32}, crop_pct=1.0).save_pretrained(root / "resnet")
    (root / "bert").mkdir()
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "dog", "car", "the", "##s"] + list("bcdefghijklmnopqrstuvwxyz")
    (root / "bert" / "vocab.txt").write_text("\n".join(vocab) + "\n")
    T.BertTokenizerFast(vocab_file=str(root / "bert" / "vocab.txt")).save_pretrained(root / "bert")
    T.BertModel(T.BertConfig(vocab_size=len(vocab), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                             intermediate_size=32, max_position_embeddings=64)).save_pretrained(root / "bert")
    T.ASTModel(T.ASTConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, max_length=100,
                           num_mel_bins=16, frequency_stride=10, time_stride=10)).save_pretrained(root / "ast")
    T.ASTFeatureExtractor(num_mel_bins=16, max_length=100).save_pretrained(root / "ast")
    T.ClapAudioModelWithProjection(T.ClapAudioConfig(
        spec_size=64, window_size=4, num_mel_bins=16, patch_size=4, patch_stride=(4, 4), hidden_size=16, depths=[1, 1],
        num_attention_heads=[2, 2], projection_dim=8, patch_embeds_hidden_size=8, enable_fusion=False)).save_pretrained(root / "clap")
    T.ClapFeatureExtractor(feature_size=16, sampling_rate=16000, max_length_s=1, hop_length=160, fft_window_size=400,
                           truncation="rand_trunc").save_pretrained(root / "clap")
    T.VideoMAEModel(T.VideoMAEConfig(image_size=32, patch_size=16, num_frames=4, tubelet_size=2, hidden_size=16, num_hidden_layers=1,
                                     num_attention_heads=2, intermediate_size=32)).save_pretrained(root / "videomae")
    T.VideoMAEImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(root / "videomae")
    T.XCLIPVisionModel(T.XCLIPVisionConfig(image_size=32, patch_size=16, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                           intermediate_size=32, mit_hidden_size=16, mit_intermediate_size=32, mit_num_hidden_layers=1,
                                           mit_num_attention_heads=2, num_frames=4)).save_pretrained(root / "xclip")
    T.CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(root / "xclip")
    return root


@functools.lru_cache(maxsize=None)
def _packaged(name):
    """The packaged defaults load once per test session (their weights are real, not tiny)."""
    return build_encoder(name)


TINY = {"resnet-50": "resnet", "bert-small": "bert", "ast": "ast", "clap-audio": "clap", "videomae": "videomae", "xclip-vision": "xclip"}
MEDIA = {
    Modality.IMAGE: ("imagebind/dog_image.jpg", None),
    Modality.AUDIO: ("imagebind/car_audio.wav", None),
    Modality.VIDEO: ("languagebind/video/0.mp4", None),
    Modality.TEXT: (None, "Training a parakeet to climb up a ladder."),
}


def _extract_one(encoder, item):
    sample = encoder.prep.prepare(item)
    with torch.inference_mode():
        return encoder.forward(encoder.prep.collate([sample]), 4)[0]


@pytest.mark.parametrize("name", [n for n in BACKBONES if n not in TINY_OF])  # the others: test_backbones_named.py
def test_every_backbone_extracts_real_media(name, tiny_hub, shared_media):
    info = BACKBONES[name]
    options = {"vocabulary": ["a", "climb", "ladder", "parakeet", "to"]} if name == "bow" else {}
    weights = str(tiny_hub / TINY[name]) if name in TINY else None
    encoder = None
    if info.modality in (Modality.IMAGE, Modality.TEXT):
        encoder = _packaged(name) if info.offline and name != "bow" else build_encoder(name, options, weights)
    path, text = MEDIA[info.modality]
    item = {"id": "x", "uri": str(shared_media / path) if path else "", "text": text or ""}
    if info.modality in (Modality.AUDIO, Modality.VIDEO):
        options["max_seconds"] = 3.0  # keeps the test fast; cutting is a recorded option
        encoder = build_encoder(name, options, weights)
    tokens, pooled = _extract_one(encoder, item)
    assert pooled.shape == (encoder.dim,) and tokens.ndim == 2 and tokens.shape[1] == encoder.dim
    assert np.isfinite(tokens).all() and np.allclose(pooled, tokens.mean(0), atol=1e-5)
    expected_tokens = {Modality.IMAGE: 1, Modality.AUDIO: 3, Modality.VIDEO: 3}  # cut at 3 s
    if info.modality in expected_tokens:
        assert len(tokens) == expected_tokens[info.modality]
    meta = encoder.meta()
    assert meta["name"] == name and meta["dim"] == encoder.dim and meta["token_rate"]
    if name in TINY:
        assert meta["weights"] == weights  # the local folder went through from_pretrained, like a hub id


def test_text_tokens_are_word_pieces_without_special_or_padding(tiny_hub):
    encoder = build_encoder("bert-small", weights=str(tiny_hub / "bert"))
    samples = [encoder.prep.prepare({"text": t}) for t in ("a dog", "the dogs a car")]
    with torch.inference_mode():
        outs = encoder.forward(encoder.prep.collate(samples), 8)
    pieces = [encoder.prep.tokenizer.tokenize(t) for t in ("a dog", "the dogs a car")]
    assert [len(t) for t, _ in outs] == [len(p) for p in pieces] == [2, len(pieces[1])] and len(pieces[1]) >= 4


TEXTS = ("a dog", "the dogs a car", "a b c d e f g", "dog")  # padded to different lengths


@pytest.mark.parametrize("name", ["bert-small", "minilm-l6"])
def test_a_mask_built_on_the_host_gives_the_models_own_features(tiny_hub, name):
    """What launches on CUDA pass (the model's own 4-D mask, built on the host, or None for a
    part without padding) gives the features of the model's own 2-D path."""
    encoder = build_encoder("bert-small", weights=str(tiny_hub / "bert")) if name == "bert-small" else _packaged(name)
    batch = encoder.prep.collate([encoder.prep.prepare({"text": t}) for t in TEXTS])
    assert encoder.host_mask(batch["attention_mask"][2:3]) is None  # the longest text alone: no padding, no mask
    for part in (3, 1):  # parts of 3 and 1 texts; with 1, the longest one goes without a mask
        with torch.inference_mode():
            encoder.host_masks = False
            own = encoder.forward(batch, part)
            encoder.host_masks = True
            host = encoder.forward(batch, part)
        for (ta, pa), (tb, pb) in zip(own, host):
            np.testing.assert_allclose(ta, tb, rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(pa, pb, rtol=1e-5, atol=1e-6)


class _CudaNamed(str):
    """``"cpu"`` to torch, a CUDA device to the encoder's checks: its CUDA path, run on the CPU."""

    def startswith(self, prefix, *args):
        return prefix == "cuda" or str.startswith(self, prefix, *args)


def test_the_host_mask_is_judged_on_a_part_with_padding(tiny_hub, monkeypatch):
    """Launches on CUDA keep the host's mask only if the model gives the features of its
    own mask with it. A part without padding cannot tell (no mask either way): it must decide
    nothing, so that a model that drops a prepared mask is found out at the first padded part."""
    import contextlib

    from mmx.extract import encoders

    encoder = build_encoder("bert-small", weights=str(tiny_hub / "bert"))
    monkeypatch.setattr(encoder, "device", _CudaNamed("cpu"))
    monkeypatch.setattr(encoders, "autocast", lambda device: contextlib.nullcontext())
    forward = encoder.model.forward

    def drops_prepared_masks(*args, attention_mask=None, **kwargs):
        prepared = attention_mask is not None and attention_mask.dim() == 4
        return forward(*args, attention_mask=None if prepared else attention_mask, **kwargs)

    monkeypatch.setattr(encoder.model, "forward", drops_prepared_masks)
    batch = encoder.prep.collate([encoder.prep.prepare({"text": t}) for t in TEXTS])
    batch = {k: v for k, v in batch.items() if k != "special_tokens_mask"}
    with torch.inference_mode():
        assert encoder._use_host_masks({k: v[2:3] for k, v in batch.items()}) is False  # the longest text alone
        assert encoder.host_masks is None
        assert encoder._use_host_masks(batch) is False and encoder.host_masks is False  # padded: judged, refused


def test_with_a_host_mask_the_model_reads_nothing_back(tiny_hub, monkeypatch):
    """The model's own mask is checked for padding by a read (``padding_mask.all()``): on CUDA a
    wait for the batch in flight. With the mask built on the host, the forward reads nothing."""
    encoder = build_encoder("bert-small", weights=str(tiny_hub / "bert"))
    batch = encoder.prep.collate([encoder.prep.prepare({"text": t}) for t in TEXTS])
    reads = []
    real = torch.Tensor.__bool__
    forward = encoder.model.forward

    def watched(*args, **kwargs):
        monkeypatch.setattr(torch.Tensor, "__bool__", lambda t: reads.append(tuple(t.shape)) or real(t))
        try:
            return forward(*args, **kwargs)
        finally:
            monkeypatch.setattr(torch.Tensor, "__bool__", real)

    monkeypatch.setattr(encoder.model, "forward", watched)
    with torch.inference_mode():
        encoder.host_masks = False
        encoder.forward(batch, 4)
        assert reads  # the model's own path reads its mask
        reads.clear()
        encoder.host_masks = True
        encoder.forward(batch, 4)
    assert reads == []


def test_minilm_pooled_is_mean_of_word_pieces_and_semantic():
    encoder = _packaged("minilm-l6")
    texts = ["A dog.", "A puppy.", "Quarterly tax report"]
    with torch.inference_mode():
        outs = encoder.forward(encoder.prep.collate([encoder.prep.prepare({"text": t}) for t in texts]), 8)
    assert len(outs[0][0]) == 3  # "a", "dog", "." without [CLS]/[SEP]
    p = np.stack([o[1] / np.linalg.norm(o[1]) for o in outs])
    assert p[0] @ p[1] > p[0] @ p[2] + 0.2


@pytest.mark.shared_files
def test_default_image_backbone_sees_a_dog(real_media):
    encoder = _packaged("efficientnet-lite0")
    x = torch.from_numpy(encoder.prep.prepare({"uri": str(real_media / "imagebind/dog_image.jpg")}))
    with torch.inference_mode():
        probs = encoder.classify(x).softmax(-1)[0]
    assert 151 <= int(probs.argmax()) <= 268 and float(probs.max()) > 0.5


def test_registry_metadata_and_defaults():
    for b in BACKBONES.values():
        assert b.modality in Modality and b.token_rate and b.weights and b.input and b.normalisation and b.papers
    assert set(TINY_OF) | {"resnet-50", "bert-small", "ast", "clap-audio", "videomae", "xclip-vision"} | {
        b.name for b in BACKBONES.values() if b.offline} == set(BACKBONES)  # every backbone has its tiny test
    assert set(DEFAULT_BACKBONE) == set(Modality)
    assert all(BACKBONES[n].offline for n in DEFAULT_BACKBONE.values())


def test_registry_errors_are_clear():
    with pytest.raises(KeyError, match="unknown backbone 'nope'.*mmx extract --list"):
        get_backbone("nope")
    with pytest.raises(ValueError, match="extracts image, not audio"):
        get_backbone("resnet-50", "audio")
    with pytest.raises(ValueError, match="unknown option.*fps.*known"):
        resolve_options(BACKBONES["logmel"], {"fps": 2})
    with pytest.raises(ValueError, match="packaged weights"):
        resolve_options(BACKBONES["minilm-l6"], weights="x")


def test_missing_hub_weights_offline_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="cannot load"):
        build_encoder("resnet-50", weights=str(tmp_path / "absent-model"))


@pytest.mark.gpu
def test_a_text_launch_on_cuda_never_waits_for_the_batch_in_flight(tiny_hub):
    """With the mask built on the host, launching a text batch queues its kernels without waiting
    for the batch in flight (no read back inside ``launch``)."""
    if not torch.cuda.is_available():
        pytest.skip("CUDA is not available here")
    encoder = build_encoder("bert-small", weights=str(tiny_hub / "bert")).to("cuda")
    batch = {k: v.pin_memory() for k, v in encoder.prep.collate([encoder.prep.prepare({"text": t}) for t in TEXTS]).items()}
    with torch.inference_mode():
        first = encoder.launch(batch, 3).result()  # the first launch checks the host mask once (reads)
        assert encoder.host_masks is True
        in_flight, pending = launch_behind_another(encoder, batch, 3)
        for (ta, _), (tb, _), (tc, _) in zip(first, in_flight, pending):
            np.testing.assert_allclose(ta, tc, rtol=1e-3, atol=1e-3)
            np.testing.assert_allclose(tb, tc, rtol=1e-3, atol=1e-3)
