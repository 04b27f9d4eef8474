"""CLIP and SigLIP image and text towers through ``transformers``, projected into their joint space.

:class:`ClipImage` / :class:`ClipText` give CLIP's ``image_embeds`` / ``text_embeds``;
:class:`SiglipImage` / :class:`SiglipText` SigLIP's pooled outputs (attention-pool head, text
head). Both towers of one family built from the same weights land in one space, recorded in the
store as ``space`` (and ``aligned_with``), so training can start from an aligned space. Text
tokens are the word pieces' last hidden states through the same projection (head), without
special or padding tokens; the pooled text vector is the model's own (EOS or last position),
not their mean. Why: docs/notes/extract.md.
"""

from __future__ import annotations

import os

import numpy as np

from mmx.extract.encoder_base import Encoder, Output, autocast
from mmx.extract.hub import HubImage, hub_call
from mmx.extract.preparers import TextPreparer


class _Joint:
    """Metadata of a tower that shares its space with the other tower of its family."""

    partner = ""

    def meta(self) -> dict:
        return {**super().meta(), "space": self.info.space, "aligned_with": self.partner}


class ClipImage(_Joint, HubImage):
    """CLIP vision tower + visual projection: one ``image_embeds`` row per image."""

    model_class = "CLIPVisionModelWithProjection"
    partner = "clip-text"
    channels_last = False  # a ViT: nothing to gain from NHWC

    def __init__(self, info, options):
        super().__init__(info, options)
        self.dim = int(self.model.config.projection_dim)

    def embed(self, x):
        return self.model(pixel_values=x).image_embeds


class SiglipImage(_Joint, HubImage):
    """SigLIP vision tower: its attention-pool head's output (``pooler_output``) per image."""

    model_class = "SiglipVisionModel"
    partner = "siglip-text"
    channels_last = False

    def __init__(self, info, options):
        super().__init__(info, options)
        self.dim = int(self.model.config.hidden_size)

    def embed(self, x):
        return self.model(pixel_values=x).pooler_output


class TowerTextPreparer(TextPreparer):
    """Word pieces padded as the model was trained: to the batch's longest (CLIP) or always to
    ``max_length`` (SigLIP, whose pooled vector is read at the last position)."""

    def __init__(self, tokenizer_path: str, max_length: int, padding: str):
        super().__init__(tokenizer_path, max_length)
        self.padding = padding

    def collate(self, samples: list):
        if not samples:
            return None
        return dict(self.tokenizer(samples, padding=self.padding, truncation=True, max_length=self.max_length,
                                   return_special_tokens_mask=True, return_attention_mask=True, return_tensors="pt"))


class _TextTower(_Joint, Encoder):
    model_class = ""
    padding = "longest"
    passes_mask = True  # SigLIP was trained without a mask over its fixed-length padding

    def __init__(self, info, options):
        super().__init__(info, options)
        import transformers

        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        path = options.get("weights") or info.weights
        self.model = hub_call(getattr(transformers, self.model_class).from_pretrained, path).eval()
        self.prep = TowerTextPreparer(str(path), int(options["max_length"]), self.padding)
        self.prep.tokenizer  # fail now, not in a worker, when the tokenizer is missing

    def token_rate(self) -> str:
        return "1 per word piece"

    def preprocessing(self) -> dict:
        return {**super().preprocessing(), "padding": self.padding, "attention_mask": self.passes_mask,
                "tokenizer": type(self.prep.tokenizer).__name__}

    def project(self, out):  # (n, T, H) hidden states, (n, D) pooled, both in the joint space
        raise NotImplementedError

    def forward(self, batch, batch_size: int) -> list[Output]:
        import torch

        keep = ~batch["special_tokens_mask"].bool()
        if "attention_mask" in batch:
            keep &= batch["attention_mask"].bool()
        names = ("input_ids", "attention_mask") if self.passes_mask else ("input_ids",)
        inputs = {k: batch[k] for k in names if k in batch}
        tokens, pooled = [], []
        for s in range(0, len(keep), max(1, batch_size)):
            part = {k: v[s : s + batch_size].to(self.device) for k, v in inputs.items()}
            with autocast(self.device):
                t, p = self.project(self.model(**part))
            tokens.append(t.float().cpu())
            pooled.append(p.float().cpu())
        h, p = torch.cat(tokens).numpy(), torch.cat(pooled).numpy()
        keep = keep.numpy()
        return [(np.ascontiguousarray(h[i][keep[i]]), p[i]) for i in range(len(keep))]


class ClipText(_TextTower):
    """CLIP text tower + text projection: pooled = ``text_embeds`` (the EOS token's)."""

    model_class = "CLIPTextModelWithProjection"
    partner = "clip-image"

    def __init__(self, info, options):
        super().__init__(info, options)
        self.dim = int(self.model.config.projection_dim)

    def project(self, out):
        return self.model.text_projection(out.last_hidden_state), out.text_embeds


class SiglipText(_TextTower):
    """SigLIP text tower: pooled = its head over the last position (``pooler_output``)."""

    model_class = "SiglipTextModel"
    partner = "siglip-image"
    padding = "max_length"
    passes_mask = False

    def __init__(self, info, options):
        super().__init__(info, options)
        self.dim = int(self.model.config.hidden_size)

    def project(self, out):
        head = getattr(self.model, "head", None) or self.model.text_model.head  # transformers 5 / 4 layout
        return head(out.last_hidden_state), out.pooler_output
