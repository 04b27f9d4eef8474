"""The aligned-attention block against paper 002 eq. 3-6 on a hand-computed case."""

import numpy as np
import pytest
import torch

from mmx.train.attention import AlignedAttention


def _set(block, wi, ws, wis, b, we):
    with torch.no_grad():
        for lin, w in ((block.w_i, wi), (block.w_s, ws), (block.w_is, wis), (block.w_e, we)):
            if lin is not None:
                lin.weight.copy_(torch.tensor(w, dtype=torch.float32))
        block.bias.copy_(torch.tensor(b, dtype=torch.float32))


WI, WS, WIS = [[1.0, 0.0], [0.0, 1.0]], [[0.5, 0.0], [0.0, 2.0]], [[0.0, 1.0], [1.0, 0.0]]
B, WE = [0.1, -0.2], [[1.0, 0.0], [0.0, -1.0]]


def _reference(gi, gs, use_wis=True):
    """Eq. 3-6 in numpy; nn.Linear computes x @ W.T."""
    h = gi @ np.array(WI).T + gs @ np.array(WS).T + np.array(B)
    if use_wis:
        h = h + (gi * gs) @ np.array(WIS).T
    e = np.tanh(h) @ np.array(WE).T
    alpha = np.exp(e) / np.exp(e).sum(-1, keepdims=True)  # softmax over the feature axis
    out_i, out_s = gi + alpha * gi, gs + alpha * gs  # residual re-weighting
    return alpha, out_i / np.linalg.norm(out_i, axis=-1, keepdims=True), out_s / np.linalg.norm(out_s, axis=-1, keepdims=True)


def test_block_matches_hand_computed_equations():
    block = AlignedAttention(2)
    _set(block, WI, WS, WIS, B, WE)
    gi = np.array([[1.0, 2.0], [-0.5, 0.3], [2.0, -1.0]])
    gs = np.array([[3.0, -1.0], [0.2, 0.2], [-1.0, 0.5]])
    alpha, ref_i, ref_s = _reference(gi, gs)
    a_i, a_s = block.attention(torch.tensor(gi, dtype=torch.float32), torch.tensor(gs, dtype=torch.float32))
    out_i, out_s = block(torch.tensor(gi, dtype=torch.float32), torch.tensor(gs, dtype=torch.float32))
    assert out_i.shape == out_s.shape == (3, 2)
    np.testing.assert_allclose(a_s.detach().numpy(), alpha, rtol=1e-5)
    assert torch.equal(a_i, a_s)  # one attention vector for both sides (eq. 5-6)
    np.testing.assert_allclose(a_s.sum(-1).detach().numpy(), 1.0, rtol=1e-6)  # softmax over features ...
    assert not np.allclose(alpha.sum(0), 1.0)  # ... not over the batch
    np.testing.assert_allclose(out_i.detach().numpy(), ref_i, rtol=1e-5)
    np.testing.assert_allclose(out_s.detach().numpy(), ref_s, rtol=1e-5)
    np.testing.assert_allclose(out_i.norm(dim=-1).detach().numpy(), 1.0, rtol=1e-6)


def test_ablation_switches_drop_their_term():
    block = AlignedAttention(2, use_wis=False)
    assert block.w_is is None
    _set(block, WI, WS, None, B, WE)
    gi, gs = np.array([[1.0, 2.0]]), np.array([[3.0, -1.0]])
    _, ref_i, _ = _reference(gi, gs, use_wis=False)
    out_i, _ = block(torch.tensor(gi, dtype=torch.float32), torch.tensor(gs, dtype=torch.float32))
    np.testing.assert_allclose(out_i.detach().numpy(), ref_i, rtol=1e-5)


def test_all_three_off_is_the_attention_off_baseline():
    block = AlignedAttention(4, use_wi=False, use_ws=False, use_wis=False)
    assert list(block.parameters()) == []  # nothing to learn
    gi, gs = torch.randn(3, 4), torch.randn(3, 4)
    out_i, out_s = block(gi, gs)
    assert torch.allclose(out_i, gi / gi.norm(dim=1, keepdim=True)) and torch.allclose(out_s, gs / gs.norm(dim=1, keepdim=True))


def test_other_readings_temperature_and_batch_softmax():
    torch.manual_seed(0)
    gi, gs = torch.randn(5, 4), torch.randn(5, 4)
    learned = AlignedAttention(4, temperature="learned")
    plain = AlignedAttention(4)
    plain.load_state_dict({k: v for k, v in learned.state_dict().items() if k != "log_temperature"})
    assert torch.allclose(learned.attention(gi, gs)[1], plain.attention(gi, gs)[1])  # T = 1 at the start
    with torch.no_grad():
        learned.log_temperature.fill_(np.log(0.1))
    t = torch.tanh(plain.w_i(gi) + plain.w_s(gs) + plain.w_is(gi * gs) + plain.bias)
    assert torch.allclose(learned.attention(gi, gs)[1], torch.softmax(plain.w_e(t) / 0.1, -1), atol=1e-6)
    over_batch = AlignedAttention(4, softmax="batch")
    over_batch.load_state_dict(plain.state_dict())
    a = over_batch.attention(gi, gs)[1]
    assert torch.allclose(a.sum(0), torch.ones(4)) and torch.allclose(a, torch.softmax(plain.w_e(t), 0))
    with pytest.raises(ValueError, match="softmax"):
        AlignedAttention(4, softmax="heads")


def test_rvs_reference_weight_drives_the_reference_side_only():
    torch.manual_seed(0)
    block, w_ie = AlignedAttention(4), torch.nn.Linear(4, 4, bias=False)
    gi, gs = torch.randn(5, 4), torch.randn(5, 4)
    a_i, a_s = block.attention(gi, gs, w_ie)
    t = torch.tanh(block.w_i(gi) + block.w_s(gs) + block.w_is(gi * gs) + block.bias)
    assert torch.allclose(a_i, torch.softmax(w_ie(t), -1)) and torch.allclose(a_s, torch.softmax(block.w_e(t), -1))
    assert not torch.allclose(a_i, a_s)
