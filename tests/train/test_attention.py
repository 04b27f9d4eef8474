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
    with pytest.raises(ValueError, match="at least one"):
        AlignedAttention(4, use_wi=False, use_ws=False, use_wis=False)


def test_rvs_reference_weight_drives_the_reference_side_only():
    torch.manual_seed(0)
    block, w_ie = AlignedAttention(4), torch.nn.Linear(4, 4, bias=False)
    gi, gs = torch.randn(5, 4), torch.randn(5, 4)
    a_i, a_s = block.attention(gi, gs, w_ie)
    t = torch.tanh(block.w_i(gi) + block.w_s(gs) + block.w_is(gi * gs) + block.bias)
    assert torch.allclose(a_i, torch.softmax(w_ie(t), -1)) and torch.allclose(a_s, torch.softmax(block.w_e(t), -1))
    assert not torch.allclose(a_i, a_s)
