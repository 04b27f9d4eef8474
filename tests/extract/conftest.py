import pytest
import torch


@pytest.fixture(scope="session")
def tiny_resnet(tmp_path_factory):
    """A two-stage ResNet with random weights and a 32-pixel image processor, saved like a hub
    snapshot: the hub image path (``resnet-50 --weights DIR``) in milliseconds."""
    import transformers as T

    root = tmp_path_factory.mktemp("resnet")
    torch.manual_seed(0)
    T.ResNetModel(T.ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic")).save_pretrained(root)
    T.ConvNextImageProcessor(size={"shortest_edge": 32}, crop_pct=1.0).save_pretrained(root)
    return root
