"""Tiny randomly initialised backbones saved like hub snapshots (or state-dict files), shared by
the backbone tests: each is built once per test session, from its config, in milliseconds.

``tiny(root_factory, name)`` returns the folder (or file) to pass as ``--weights``. Text towers
carry a small BERT word-piece tokenizer: the tower's code reads whatever tokenizer its folder
holds (``AutoTokenizer``), as it does with a hub snapshot.
"""

from __future__ import annotations

import numpy as np
import torch

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "dog", "car", "the", "##s"] + list("bcdefghijklmnopqrstuvwxyz")
_BUILT: dict = {}


def _tokenizer(path):
    import transformers as T

    path.mkdir(parents=True, exist_ok=True)
    (path / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    T.BertTokenizerFast(vocab_file=str(path / "vocab.txt")).save_pretrained(path)


def _clip(path):
    import transformers as T

    vision = T.CLIPVisionConfig(image_size=32, patch_size=16, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                num_attention_heads=2, projection_dim=8)
    text = T.CLIPTextConfig(vocab_size=len(VOCAB), hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                            max_position_embeddings=77, projection_dim=8, pad_token_id=0, bos_token_id=2, eos_token_id=3)
    T.CLIPModel(T.CLIPConfig(text_config=text.to_dict(), vision_config=vision.to_dict(), projection_dim=8)).save_pretrained(path)
    T.CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(path)
    _tokenizer(path)


def _siglip(path):
    import transformers as T

    vision = T.SiglipVisionConfig(image_size=32, patch_size=16, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                  num_attention_heads=2)
    text = T.SiglipTextConfig(vocab_size=len(VOCAB), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                              num_attention_heads=2, max_position_embeddings=64, pad_token_id=0)
    T.SiglipModel(T.SiglipConfig(text_config=text.to_dict(), vision_config=vision.to_dict())).save_pretrained(path)
    T.SiglipImageProcessor(size={"height": 32, "width": 32}).save_pretrained(path)
    _tokenizer(path)


def _whisper(path):
    import transformers as T

    T.WhisperModel(T.WhisperConfig(vocab_size=64, num_mel_bins=16, d_model=16, encoder_layers=1, encoder_attention_heads=2,
                                   decoder_layers=1, decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32,
                                   max_source_positions=100, max_target_positions=16, pad_token_id=0, bos_token_id=1,
                                   eos_token_id=1, decoder_start_token_id=2, begin_suppress_tokens=None, suppress_tokens=None)
                   ).save_pretrained(path)
    T.WhisperFeatureExtractor(feature_size=16, chunk_length=2).save_pretrained(path)  # 2 s windows: 200 frames


def _wav2vec2_like(path, model, config):
    import transformers as T

    cfg = config(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, conv_dim=(8,) * 7,
                 num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2)
    model(cfg).save_pretrained(path)
    T.Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, do_normalize=True, return_attention_mask=False).save_pretrained(path)


def _resnet(path):
    import transformers as T

    T.ResNetModel(T.ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="bottleneck")).save_pretrained(path)
    T.ConvNextImageProcessor(size={"shortest_edge": 32}, crop_pct=1.0).save_pretrained(path)


def _torchvision_state(path, builder):
    torch.save(builder(weights=None).state_dict(), path)


def _vggish_state(path):
    from mmx.extract.vggish import import_vggish

    torch.save(import_vggish()[1]().state_dict(), path)


def _word_vectors(path):
    rng = np.random.default_rng(0)
    words = ["a", "dog", "car", "the", "climb", "ladder", "Parakeet", "to", "training", "up"]
    vectors = rng.standard_normal((len(words), 6)).astype(np.float32)
    with open(path, "w") as f:
        f.write(f"{len(words)} 6\n")
        for w, v in zip(words, vectors):
            f.write(w + " " + " ".join(f"{x:.6f}" for x in v) + "\n")


def _builders():
    import transformers as T

    def tv(attr, video=False):
        def build(path):
            import torchvision

            _torchvision_state(path, getattr(torchvision.models.video if video else torchvision.models, attr))
        return build

    return {
        "clip": _clip, "siglip": _siglip, "whisper": _whisper, "resnet152": _resnet,
        "wav2vec2": lambda p: _wav2vec2_like(p, T.Wav2Vec2Model, T.Wav2Vec2Config),
        "hubert": lambda p: _wav2vec2_like(p, T.HubertModel, T.HubertConfig),
        "resnext101.pt": tv("resnext101_32x8d"), "s3d.pt": tv("s3d", video=True), "vggish.pt": _vggish_state,
        "words.txt": _word_vectors,
    }


def tiny(root_factory, name: str):
    """The weights folder or file of tiny backbone ``name``, built on first use in this session."""
    if name not in _BUILT:
        path = root_factory.mktemp("tiny") / name
        torch.manual_seed(0)
        _builders()[name](path)
        _BUILT[name] = path
    return _BUILT[name]


# the tiny weights each registered backbone is tested with (None: packaged or needing none)
TINY_OF = {
    "resnet-152": "resnet152", "clip-image": "clip", "clip-text": "clip", "siglip-image": "siglip", "siglip-text": "siglip",
    "whisper-encoder": "whisper", "wav2vec2": "wav2vec2", "hubert": "hubert", "resnext-101": "resnext101.pt",
    "s3d": "s3d.pt", "vggish": "vggish.pt", "word-vectors": "words.txt",
}
NEEDS = {"resnext-101": "torchvision", "s3d": "torchvision", "vggish": "torchaudio"}
# options that keep the tests fast (all are recorded options, part of the cache key)
FAST = {"resnext-101": {"resize_size": 36, "crop_size": 32}, "s3d": {"resize_size": 36, "crop_size": 32, "frames": 8}}
