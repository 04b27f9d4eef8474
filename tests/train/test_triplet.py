"""Semi-hard negative mining (thesis 2.6) and eq. 3.1.6 on hand-made cases."""

import pytest
import torch

from mmx.train.triplet import pair_triplet_loss, select_semihard, semihard_triplet_loss, squared_distances


def test_semihard_picks_the_closest_negative_beyond_the_positive():
    # 1-D points; anchor 0 at 0.0 (class 0), candidates: positive at 1.0 and four negatives
    anchor = torch.tensor([[0.0]])
    cand = torch.tensor([[1.0], [0.5], [1.2], [1.5], [3.0]])
    labels = torch.tensor([0, 1, 1, 1, 1])
    dist = squared_distances(anchor, cand)  # 1.0, 0.25 (hard), 1.44, 2.25 (semi-hard), 9.0 (easy)
    pos, neg = labels.eq(0).unsqueeze(0), labels.ne(0).unsqueeze(0)
    value, index = select_semihard(dist, pos, neg)
    assert int(index[0, 0]) == 2 and float(value[0, 0]) == pytest.approx(1.44)
    loss = semihard_triplet_loss(anchor, torch.tensor([0]), cand, labels, margin=1.0)
    assert float(loss) == pytest.approx(1.0 - 1.44 + 1.0)


def test_all_hard_negatives_fall_back_to_the_farthest():
    anchor = torch.tensor([[0.0]])
    cand = torch.tensor([[2.0], [0.5], [1.0]])  # positive at 2.0, both negatives are closer
    labels = torch.tensor([0, 1, 1])
    value, index = select_semihard(squared_distances(anchor, cand), labels.eq(0).unsqueeze(0), labels.ne(0).unsqueeze(0))
    assert int(index[0, 0]) == 2 and float(value[0, 0]) == pytest.approx(1.0)
    loss = semihard_triplet_loss(anchor, torch.tensor([0]), cand, labels, margin=1.0)
    assert float(loss) == pytest.approx(4.0 - 1.0 + 1.0)


def test_easy_negatives_give_zero_and_self_is_no_positive():
    x = torch.tensor([[0.0], [0.1], [5.0], [5.1]])
    y = torch.tensor([0, 0, 1, 1])
    assert float(semihard_triplet_loss(x, y, x, y, margin=1.0, same_set=True)) == 0.0
    # a lone item of its class has no positive: no term, no NaN
    lone = semihard_triplet_loss(x[:3], torch.tensor([0, 1, 2]), x[:3], torch.tensor([0, 1, 2]), same_set=True)
    assert float(lone) == 0.0


def test_pair_loss_weights_intra_and_inter_terms():
    g = torch.Generator().manual_seed(1)
    fx, fy = torch.randn(8, 4, generator=g), torch.randn(8, 4, generator=g)
    lab = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    out = pair_triplet_loss(fx, lab, fy, lab, (1.0, 1.0, 1.0), (0.25, 0.25, 0.5), symmetric=False)
    intra_x = semihard_triplet_loss(fx, lab, fx, lab, 1.0, same_set=True)
    intra_y = semihard_triplet_loss(fy, lab, fy, lab, 1.0, same_set=True)
    inter = semihard_triplet_loss(fx, lab, fy, lab, 1.0)
    assert float(out["triplet"]) == pytest.approx(float(0.25 * intra_x + 0.25 * intra_y + 0.5 * inter))
    sym = pair_triplet_loss(fx, lab, fy, lab, symmetric=True)
    assert float(sym["inter"]) == pytest.approx(0.5 * float(inter + semihard_triplet_loss(fy, lab, fx, lab, 1.0)))
