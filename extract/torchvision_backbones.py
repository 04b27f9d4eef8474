"""ResNeXt-101 (image) and S3D (video) through ``torchvision`` (extra: ``pip install 'mmx[torchvision]'``).

Weights are a member of the model's weights enum (``--weights IMAGENET1K_V2``; the default in
the registry) or a local state-dict file (``--weights FILE``, read with ``weights_only``); the
preprocessing is that of the enum's ``transforms()`` (resize, centre crop, mean/std), which
``resize_size`` / ``crop_size`` may override, all of it recorded in the cache key. torchvision is
imported only when one of these is built. Why: docs/notes/extract.md.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mmx.extract import decode
from mmx.extract.encoder_base import RowEncoder, local_path
from mmx.extract.hub import VideoWindowPreparer
from mmx.extract.preparers import ImagePreparer


def import_torchvision():
    try:
        import torchvision
    except (ImportError, RuntimeError) as exc:  # absent, or built for another torch (its operators fail to register)
        raise ImportError(f"this backbone needs torchvision: pip install 'mmx[torchvision]' ({exc})") from None
    return torchvision


def resolve_weights(info, options: dict):
    """``(enum member or None, state-dict file or None, the member whose transforms apply)``."""
    tv = import_torchvision()
    enum_name, _, default_member = info.weights.removeprefix("torchvision:").partition(".")
    enum = tv.models.get_weight(f"{enum_name}.{default_member}").__class__
    given = options.get("weights")
    if not given:
        member = enum[default_member]
        return member, None, member
    if Path(str(given)).expanduser().is_file():
        return None, Path(str(given)).expanduser(), enum[default_member]
    name = str(given).rpartition(".")[2]
    if name not in enum.__members__:
        raise ValueError(f"weights {given!r} for backbone {info.name!r}: neither a file nor one of "
                         f"{', '.join(enum.__members__)} ({enum_name})")
    return enum[name], None, enum[name]


def build_model(builder, member, file: Path | None):
    """The model with a member's weights (downloaded once into torch's hub cache) or a file's.

    Both are read with ``weights_only``: torchvision's own ``builder(weights=member)`` reads the
    cached file with ``torch.hub.load_state_dict_from_url``'s default, a full unpickling, which
    would run code planted in that cache."""
    import torch

    if member is not None:
        model = builder(weights=None, num_classes=len(member.meta["categories"]))
        model.load_state_dict(member.get_state_dict(progress=True, check_hash=True, weights_only=True))
    else:
        model = builder(weights=None)
    if file is not None:
        state = torch.load(file, map_location="cpu", weights_only=True)
        model.load_state_dict(state.get("state_dict", state) if isinstance(state, dict) else state)
    return model.eval()


def transform_settings(member, options: dict) -> dict:
    t = member.transforms()
    resize = options.get("resize_size") or list(t.resize_size)[0]
    crop = options.get("crop_size") or list(t.crop_size)[0]
    return {"resize_size": int(resize), "crop_size": int(crop), "mean": [float(m) for m in t.mean],
            "std": [float(s) for s in t.std], "interpolation": str(t.interpolation.value), "transforms": f"{member!s}"}


class ResizeCropPreparer(ImagePreparer):
    """``(1, 3, C, C)`` uint8: the shorter side resized to ``resize`` (bilinear, antialiased),
    then the centre ``C`` x ``C``, as torchvision's ``ImageClassification`` transform does."""

    def __init__(self, resize: int, crop: int, mean, std, max_pixels: int):
        super().__init__(crop, mean, std, max_pixels, False)
        self.resize = resize

    def prepare(self, item: dict) -> np.ndarray:
        from PIL import Image

        im = decode.load_image(local_path(item), self.max_pixels, draft=None)
        w, h = im.size
        scale = self.resize / min(w, h)
        im = im.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.BILINEAR)
        w, h = im.size
        left, top = (w - self.size) // 2, (h - self.size) // 2
        im = im.crop((left, top, left + self.size, top + self.size))
        return np.asarray(im, dtype=np.uint8).transpose(2, 0, 1)[None].copy()


class ResNeXt101(RowEncoder):
    """ImageNet ResNeXt-101 32x8d; pooled = the 2048-d input of its classifier."""

    channels_last = True

    def __init__(self, info, options):
        super().__init__(info, options)
        tv = import_torchvision()
        import torch

        member, file, transforms_of = resolve_weights(info, options)
        self.model = build_model(tv.models.resnext101_32x8d, member, file)
        self.model.fc = torch.nn.Identity()
        self.settings = transform_settings(transforms_of, options)
        s = self.settings
        self.prep = ResizeCropPreparer(s["resize_size"], s["crop_size"], s["mean"], s["std"], options["max_pixels"])
        self.dim = 2048

    def preprocessing(self) -> dict:
        return {**super().preprocessing(), **self.settings, "resize": "shorter-side-then-centre-crop"}

    def embed(self, x):
        return self.model(x)


class S3DVideo(RowEncoder):
    """Kinetics-400 S3D over ``window_seconds`` windows of ``frames`` frames, each squashed to
    ``resize_size`` and centre-cropped to ``crop_size``; token = its features pooled over time
    and space (the input of its classifier)."""

    def __init__(self, info, options):
        super().__init__(info, options)
        import_torchvision()
        from torchvision.models import video

        member, file, transforms_of = resolve_weights(info, options)
        self.model = build_model(video.s3d, member, file)
        self.settings = transform_settings(transforms_of, options)
        s = self.settings
        if s["crop_size"] > s["resize_size"]:
            raise ValueError(f"crop_size {s['crop_size']} is larger than resize_size {s['resize_size']}")
        self.prep = VideoWindowPreparer(int(options["frames"]), float(options["window_seconds"]), max_seconds=options["max_seconds"],
                                        size=s["resize_size"], mean=s["mean"], std=s["std"],
                                        max_pixels=decode.DEFAULT_MAX_PIXELS, draft=False)
        self.dim = 1024

    def token_rate(self) -> str:
        return f"{1 / self.options['window_seconds']:g} per second"

    def preprocessing(self) -> dict:
        return {**super().preprocessing(), **self.settings, "resize": "bilinear-squash-then-centre-crop"}

    def items_per_batch(self, batch_size: int) -> int:
        return max(1, batch_size // 16)

    def embed(self, x):  # (W, F, 3, R, R) normalised -> (W, 1024)
        c, r = self.settings["crop_size"], x.shape[-1]
        o = (r - c) // 2
        x = x[..., o : o + c, o : o + c].permute(0, 2, 1, 3, 4)  # (W, 3, F, C, C)
        return self.model.features(x).mean((2, 3, 4))
