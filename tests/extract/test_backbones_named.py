"""The papers' backbones by name, each with a tiny random model built from its config.

Per backbone: shapes (pooled and per token), token layout (its rate), determinism, a cache key
that changes with its preprocessing, an end-to-end ``mmx extract --backbone NAME``, and (gpu
marked) CPU against CUDA. torchvision and torchaudio backbones skip where their library is
absent (run them in a venv with the extras).
"""

import shutil

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from tiny_backbones import FAST, NEEDS, TINY_OF, tiny

from mmx.cache.modality import Modality
from mmx.cache.store import StoreSpec, list_stores
from mmx.extract.backbones import BACKBONES, UNAVAILABLE, build_encoder
from mmx.pipeline.cli import main

NAMES = list(TINY_OF)
TEXT = "Training a parakeet to climb up a ladder."
MEDIA = {Modality.IMAGE: "imagebind/dog_image.jpg", Modality.AUDIO: "imagebind/car_audio.wav", Modality.VIDEO: "languagebind/video/0.mp4"}
CUT = {"max_seconds": 3.0}  # audio and video cut at 3 s: three 1 s tokens
TEXT_TOWERS = ("clip-text", "siglip-text")


def need(name):
    lib = NEEDS.get(name)
    if lib == "torchaudio":
        try:
            from mmx.extract.vggish import import_vggish

            import_vggish()
        except ImportError as exc:
            pytest.skip(str(exc))
    elif lib:
        pytest.importorskip(lib, reason=f"{lib} is an optional extra (pip install 'mmx[{lib}]')")


def options_of(name, **extra):
    info = BACKBONES[name]
    out = dict(FAST.get(name, {}))
    if info.modality in (Modality.AUDIO, Modality.VIDEO):
        out.update(CUT)
    out.update(extra)
    return out


def build(factory, name, weights=None, **extra):
    need(name)
    weights = weights or tiny(factory, TINY_OF[name])
    options = options_of(name, **extra)
    if name == "word-vectors":
        return build_encoder(name, {**options, "path": str(weights)})
    return build_encoder(name, options, str(weights))


def item_of(name, media, text=TEXT):
    modality = BACKBONES[name].modality
    if modality == Modality.TEXT:
        return {"id": "x", "uri": "", "text": text}
    return {"id": "x", "uri": str(media / MEDIA[modality]), "text": ""}


def run(encoder, items, batch_size=4):
    samples = [encoder.prep.prepare(it) for it in items]
    with torch.inference_mode():
        return encoder.forward(encoder.prep.collate(samples), batch_size)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = build(tmp_path_factory, name)
        return cache[name]
    return get


def expected_tokens(name, encoder):
    modality = BACKBONES[name].modality
    if modality == Modality.IMAGE:
        return 1
    if modality in (Modality.AUDIO, Modality.VIDEO):
        return 3  # 3 s at one token per second (VGGish: three 0.96 s examples)
    if name == "word-vectors":
        return 7  # 8 words: "Training" is found by its lower case, "parakeet" not at all (the file has "Parakeet")
    return len(encoder.prep.tokenizer.tokenize(TEXT))


@pytest.mark.parametrize("name", NAMES)
def test_shapes_and_token_layout(name, built, shared_media):
    encoder = built(name)
    (tokens, pooled), = run(encoder, [item_of(name, shared_media)])
    assert pooled.shape == (encoder.dim,) and tokens.shape == (expected_tokens(name, encoder), encoder.dim)
    assert tokens.dtype == np.float32 and np.isfinite(tokens).all() and np.isfinite(pooled).all()
    if name not in TEXT_TOWERS:  # a text tower's pooled vector is its own (EOS / last position), in the joint space
        np.testing.assert_allclose(pooled, tokens.mean(0), rtol=1e-5, atol=1e-6)
    assert encoder.meta()["name"] == name and encoder.meta()["dim"] == encoder.dim


@pytest.mark.parametrize("name", NAMES)
def test_deterministic_and_independent_of_the_batch(name, built, shared_media):
    encoder = built(name)
    item = item_of(name, shared_media)
    other = item_of(name, shared_media, text="the dogs a car a b c d e f g h i j") if BACKBONES[name].modality == Modality.TEXT else item
    (t1, p1), = run(encoder, [item])
    (t2, p2), _ = run(encoder, [item, other])
    np.testing.assert_allclose(t1, t2, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(p1, p2, rtol=1e-4, atol=1e-5)
    (t3, p3), = run(encoder, [item])
    assert np.array_equal(t1, t3) and np.array_equal(p1, p3)


def _key(encoder, modality):
    return StoreSpec("d", modality, encoder.meta(), encoder.preprocessing(), "ids").key()


def _reprocessed(factory, name, tmp_path):
    """The same tiny weights with another preprocessing saved beside them (what a hub snapshot's
    processor or feature extractor config says)."""
    import transformers as T

    src = tiny(factory, TINY_OF[name])
    dst = tmp_path / "other"
    shutil.copytree(src, dst)
    if BACKBONES[name].modality == Modality.IMAGE:
        proc = T.AutoImageProcessor.from_pretrained(dst)
        proc.image_mean = [0.4, 0.4, 0.4]
        proc.save_pretrained(dst)
    else:
        if name == "whisper-encoder":
            fe = T.WhisperFeatureExtractor(feature_size=16, chunk_length=2, hop_length=160, n_fft=320)
        else:
            fe = T.AutoFeatureExtractor.from_pretrained(dst)
            fe.do_normalize = False
        fe.save_pretrained(dst)
    return dst


# one preprocessing change per backbone: a recorded option, or its processor's own settings
CHANGE = {
    "clip-text": {"max_length": 16}, "siglip-text": {"max_length": 32}, "whisper-encoder": {"token_seconds": 0.5},
    "wav2vec2": {"chunk_seconds": 1.0}, "hubert": {"chunk_seconds": 1.0}, "resnext-101": {"resize_size": 40},
    "s3d": {"window_seconds": 0.5}, "vggish": {"max_seconds": 2.0}, "word-vectors": {"lowercase_fallback": False},
}
PROCESSOR = ("resnet-152", "clip-image", "siglip-image", "whisper-encoder", "wav2vec2", "hubert")


@pytest.mark.parametrize("name", NAMES)
def test_the_cache_key_changes_with_its_preprocessing(name, built, tmp_path_factory, tmp_path):
    encoder = built(name)
    modality = BACKBONES[name].modality
    base = _key(encoder, modality)
    assert base == _key(build(tmp_path_factory, name), modality)  # the same settings: the same key
    if name in CHANGE:
        changed = build(tmp_path_factory, name, **CHANGE[name])
        assert changed.preprocessing() != encoder.preprocessing() and _key(changed, modality) != base
    if name in PROCESSOR:
        other = build(tmp_path_factory, name, weights=_reprocessed(tmp_path_factory, name, tmp_path))
        assert other.preprocessing() != encoder.preprocessing() and _key(other, modality) != base


@pytest.mark.parametrize("name", NAMES)
def test_rebuilt_from_its_store_record(name, built):
    """What a trained run does to embed a new query (``mmx search``): the backbone rebuilt from the
    store's record (its metadata and preprocessing) is the same backbone."""
    from mmx.pipeline.embed import encoder_for

    encoder = built(name)

    class Store:
        meta = {"backbone": encoder.meta(), "preprocessing": encoder.preprocessing()}
        path = "store"
    assert encoder_for(Store).meta() == encoder.meta()


@pytest.mark.parametrize("name", ["whisper-encoder", "wav2vec2", "hubert"])
def test_speech_tokens_follow_token_seconds_across_chunks(name, tmp_path_factory, shared_media):
    """Half-second tokens double the count; 1 s chunks (Whisper's tiny window is 2 s) stitch the
    frames of several chunks back into one timeline."""
    half = build(tmp_path_factory, name, token_seconds=0.5)
    (tokens, _), = run(half, [item_of(name, shared_media)])
    assert len(tokens) == 6 and half.token_rate() == "2 per second"
    if name != "whisper-encoder":
        chunked = build(tmp_path_factory, name, chunk_seconds=1.0)
        (tokens, pooled), = run(chunked, [item_of(name, shared_media)])
        assert len(tokens) == 3 and np.isfinite(pooled).all()
    with pytest.raises(ValueError, match="token_seconds must be at least one frame"):
        build(tmp_path_factory, name, token_seconds=0.001)


def test_s3d_windows_follow_window_seconds(tmp_path_factory, shared_media):
    encoder = build(tmp_path_factory, "s3d", window_seconds=0.5)
    (tokens, _), = run(encoder, [item_of("s3d", shared_media)])
    assert len(tokens) == 6 and encoder.token_rate() == "2 per second"


@pytest.mark.parametrize("family", ["clip", "siglip"])
def test_towers_land_in_the_joint_space_of_the_full_model(family, built, tmp_path_factory, shared_media):
    """Each tower's pooled vector is what the full two-tower model gives for the same input, and
    both towers record the shared space (a run can start aligned)."""
    import transformers as T

    full = getattr(T, "CLIPModel" if family == "clip" else "SiglipModel").from_pretrained(tiny(tmp_path_factory, family)).eval()
    image, text = built(f"{family}-image"), built(f"{family}-text")
    batch = text.prep.collate([TEXT])
    with torch.inference_mode():
        names = ("input_ids", "attention_mask") if family == "clip" else ("input_ids",)
        want_text = full.get_text_features(**{k: batch[k] for k in names})
        pixels = image.normalise_pixels(torch.from_numpy(image.prep.prepare(item_of(f"{family}-image", shared_media))))
        want_image = full.get_image_features(pixel_values=pixels)
    want_text = getattr(want_text, "pooler_output", want_text)
    want_image = getattr(want_image, "pooler_output", want_image)
    (_, got_text), = run(text, [{"text": TEXT}])
    (_, got_image), = run(image, [item_of(f"{family}-image", shared_media)])
    np.testing.assert_allclose(got_text, want_text[0].numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(got_image, want_image[0].numpy(), rtol=1e-4, atol=1e-5)
    assert image.dim == text.dim
    assert image.meta()["space"] == text.meta()["space"] == family
    assert image.meta()["aligned_with"] == f"{family}-text" and text.meta()["aligned_with"] == f"{family}-image"


def test_text_tower_tokens_are_word_pieces_without_special_or_padding(built):
    for name in TEXT_TOWERS:
        encoder = built(name)
        outs = run(encoder, [{"text": "a dog"}, {"text": "the dogs a car"}])
        assert [len(t) for t, _ in outs] == [2, len(encoder.prep.tokenizer.tokenize("the dogs a car"))]
    assert built("siglip-text").prep.collate(["a dog"])["input_ids"].shape[1] == 64  # padded as trained


@pytest.mark.parametrize("name", NAMES)
def test_mmx_extract_runs_each_backbone_by_name(name, tmp_path_factory, tmp_path, shared_media):
    import pandas as pd

    need(name)
    modality = BACKBONES[name].modality
    item = item_of(name, shared_media)
    pd.DataFrame([dict(id="x", modality=modality.value, uri=item["uri"], text=item["text"], label="l", split="train")]).to_csv(
        tmp_path / "m.csv", index=False)
    weights = tiny(tmp_path_factory, TINY_OF[name])
    settings = [f"{k}={v}" for k, v in options_of(name).items()]
    if name == "word-vectors":
        settings.append(f"path={weights}")
    args = ["extract", str(tmp_path / "m.csv"), "--modality", modality.value, "--backbone", name, "--cache", str(tmp_path / "c"),
            "--dataset", "d", "--workers", "0", "--no-progress", "--allow-root", str(shared_media)]
    args += [] if name == "word-vectors" else ["--weights", str(weights)]
    for s in settings:
        args += ["--set", s]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    (store,) = list_stores(tmp_path / "c")
    assert store.backbone["name"] == name and "1 ok, 0 failed" in r.output
    if BACKBONES[name].space:
        assert store.backbone["space"] == BACKBONES[name].space


def test_list_names_the_papers_and_what_is_unavailable():
    r = CliRunner().invoke(main, ["extract", "--list"])
    assert r.exit_code == 0
    header = r.output.splitlines()[0]
    assert "PAPERS" in header
    for name in NAMES:
        assert name in r.output
    for name in UNAVAILABLE:
        line = next(x for x in r.output.splitlines() if x.startswith(f"Not available: {name}"))
        assert "closest:" in line
    assert "s3d" in next(x for x in r.output.splitlines() if x.startswith("Not available: MoViNet"))
    assert "clip-image=clip" in r.output and "siglip-text=siglip" in r.output
    rows = {x.split()[0]: x for x in r.output.splitlines()[1:] if x and x.split()[0] in BACKBONES}
    assert " 000" in rows["vggish"] and "001" in rows["resnet-152"] and "001" in rows["word-vectors"]


@pytest.mark.parametrize("name", ["resnext-101", "s3d", "vggish"])
def test_a_missing_extra_is_a_one_line_error_naming_it(name, tmp_path):
    try:
        need(name)
    except pytest.skip.Exception:
        extra = NEEDS[name]
        with pytest.raises(ImportError, match=rf"pip install 'mmx\[{extra}\]'") as err:
            build_encoder(name, weights=str(tmp_path / "w.pt"))
        assert "\n" not in str(err.value)
        return
    pytest.skip(f"{NEEDS[name]} is installed here")


def test_torchvision_weights_that_are_neither_file_nor_enum_member_are_refused(tmp_path):
    need("resnext-101")
    with pytest.raises(ValueError, match="neither a file nor one of IMAGENET1K_V1, IMAGENET1K_V2"):
        build_encoder("resnext-101", weights="IMAGENET9K")


@pytest.mark.gpu
@pytest.mark.parametrize("name", NAMES)
def test_cuda_agrees_with_the_cpu(name, tmp_path_factory, shared_media):
    """Under CUDA's bf16/fp16 autocast the features stay within a few percent of the CPU's."""
    if not torch.cuda.is_available():
        pytest.skip("CUDA is not available here")
    encoder = build(tmp_path_factory, name)
    item = item_of(name, shared_media)
    (tc, pc), = run(encoder, [item])
    encoder.to("cuda")
    (tg, pg), = run(encoder, [item])
    assert tg.shape == tc.shape
    for a, b in ((tc, tg), (pc, pg)):
        assert np.linalg.norm(a - b) <= 0.05 * np.linalg.norm(a) + 1e-4, (name, np.linalg.norm(a - b), np.linalg.norm(a))


def test_the_key_does_not_depend_on_the_image_processors_backend(built):
    """transformers picks a Pil or a torchvision class for one processor by what is installed:
    the key records the processor's family, so installing the torchvision extra keeps the keys."""
    assert built("resnet-152").preprocessing()["processor"] == "ConvNextImageProcessor"
    assert built("clip-image").preprocessing()["processor"] == "CLIPImageProcessor"
