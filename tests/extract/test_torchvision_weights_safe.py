"""The torchvision backbones read an enum member's weights with ``weights_only`` (torchvision's own
``builder(weights=member)`` unpickles the hub cache's file in full). Runs without torchvision:
a fake member and builder stand in for them."""

import torch

from mmx.extract.torchvision_backbones import build_model


class _Member:
    meta = {"categories": ["a", "b", "c"]}

    def __init__(self):
        self.state = torch.nn.Linear(4, 3).state_dict()
        self.asked: dict = {}

    def get_state_dict(self, **kwargs):
        self.asked = kwargs
        return self.state


def _builder(weights=None, num_classes=1000):
    assert weights is None, "the builder must not load the member itself"
    return torch.nn.Linear(4, num_classes)


def test_a_members_weights_are_read_with_weights_only_into_a_model_of_its_classes():
    member = _Member()
    model = build_model(_builder, member, None)
    assert member.asked.get("weights_only") is True and member.asked.get("check_hash") is True
    assert all(torch.equal(model.state_dict()[k], v) for k, v in member.state.items())
    assert not model.training


def test_a_state_dict_file_is_read_with_weights_only(tmp_path):
    state = torch.nn.Linear(4, 1000).state_dict()
    torch.save({"state_dict": state}, tmp_path / "w.pt")
    model = build_model(_builder, None, tmp_path / "w.pt")
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
