"""The one preparation path: every problem of a config at once, and the strategy contract's defaults."""

import pytest
import torch

from mmx.train.config import TrainConfig
from mmx.train.prepare import validate
from mmx.train.strategies import STRATEGIES, get_strategy


def test_every_problem_of_a_config_is_reported_at_once():
    cfg = TrainConfig(strategy="joint", modalities=["text", "image"], lr=-1, monitor="R@0", keep="all", normalize="zscore",
                      alignment="diagonal", holdout="train", options={"nope": 1})
    with pytest.raises(ValueError) as caught:
        validate(cfg, resume="/nonexistent/run")
    text = str(caught.value)
    assert text.startswith("invalid training config:")
    for part in ("lr=-1", "monitor must be", "keep must be", "normalize must be one of", "alignment must be",
                 "holdout must be val or test", "unknown option(s) nope", "--resume /nonexistent/run"):
        assert part in text, (part, text)


def test_an_unknown_strategy_is_one_problem_among_the_others():
    with pytest.raises(ValueError, match="(?s)unknown strategy 'nope'.*keep must be"):
        validate(TrainConfig(strategy="nope", modalities=["text", "image"], keep="all"))


def test_a_valid_config_comes_back_concrete():
    cfg, cls = validate(TrainConfig(strategy="cvs", modalities=["Text", "image"]))
    assert cls is get_strategy("cvs") and cfg.modalities == ["text", "image"] and cfg.normalize == "standardize"


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_every_strategy_has_the_contracts_defaults(name):
    cls = get_strategy(name)
    for method in ("stages", "begin_stage", "end_stage", "batch_seed", "embed_chunks", "warm_start"):
        assert callable(getattr(cls, method, None)), (name, method)
    assert isinstance(cls.paper_settings, dict) and cls.paper_settings


def test_embed_chunks_concatenates_and_keeps_an_empty_split_shaped():
    from mmx.train.strategies.base import Strategy

    s = Strategy.__new__(Strategy)
    s.cfg, s.device = TrainConfig(embed_dim=3), torch.device("cpu")
    x = torch.arange(10.0).reshape(10, 1)
    out = s.embed_chunks(lambda r: r.repeat(1, 3), x, chunk=4)
    assert torch.equal(out, x.repeat(1, 3))
    assert s.embed_chunks(lambda r: r, x[:0]).shape == (0, 3)
