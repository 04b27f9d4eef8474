"""The compute device every stage runs on: ``resolve_device("auto" | "cpu" | "cuda" | "cuda:N")``.

One definition for extraction, training and inference, so ``--device`` means the same in every
command. torch is imported inside the function so that ``import mmx.cache`` stays light.
"""

from __future__ import annotations


def resolve_device(name: str = "auto"):
    """``name`` as a :class:`torch.device`; ``auto`` is CUDA when present, else the CPU.

    Raises ``ValueError`` naming the fix when CUDA is asked for and is not there.
    """
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ValueError(f"--device {name}: not a device; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: CUDA is not available on this machine; use --device auto or cpu")
    return dev
