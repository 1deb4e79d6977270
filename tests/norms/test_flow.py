"""fewshot.norms.flow and fewshot.norms.sufficient: statistics as values, merged exactly, states computed purely."""

from __future__ import annotations

import pytest
import torch

import fewshot.norms as norms
from fewshot.norms import NORM_LAYERS, create

MERGEABLE = [n for n in NORM_LAYERS.names() if create(n, 8).track_running_stats]
OPTIONS = {"swbn": {"group_size": 4}, "dbn": {"group_size": 4}, "iternorm": {"group_size": 4}}


def _tensors(stats):
    return [t for t in stats if isinstance(t, torch.Tensor)]


@pytest.mark.parametrize("name", MERGEABLE)
def test_merged_statistics_of_disjoint_batches_equal_those_of_their_union(name):
    torch.manual_seed(0)
    layer = create(name, 8, dtype=torch.float64, **OPTIONS.get(name, {})).train()
    x = 3.0 + torch.randn(11, 8, 3, 3, dtype=torch.float64)  # |μ| > σ: where merging Σx, Σx² would lose digits
    model = torch.nn.Sequential(layer)
    parts = []
    with norms.frozen_stats(model):
        for chunk in (x[:2], x[2:7], x[7:]):
            with norms.collect(model) as stats:
                model(chunk)
            parts.append(stats)
        with norms.collect(model) as joined:
            model(x)
    merged = norms.merge(model, parts)
    for got, want in zip(_tensors(merged["0"]), _tensors(joined["0"]), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    state = norms.next_state(model, merged)
    for key, want in norms.next_state(model, joined).items():
        torch.testing.assert_close(state[key], want, rtol=1e-10, atol=1e-12)
    assert int(layer.num_batches_tracked) == 0  # next_state is pure: nothing was written


def test_advance_computes_the_next_state_on_copies_and_commit_writes_it():
    torch.manual_seed(0)
    model = torch.nn.Sequential(create("batchnorm", 4), torch.nn.ReLU(), create("swbn", 4, group_size=2)).train()
    reference = torch.nn.Sequential(create("batchnorm", 4), torch.nn.ReLU(), create("swbn", 4, group_size=2)).train()
    reference.load_state_dict(model.state_dict())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(6, 4, 2, 2)
    with norms.frozen_stats(model):  # advance turns updates on for its own pass only
        state = norms.advance(model, x)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    with torch.no_grad():
        reference(x)  # a plain training forward
    norms.commit(model, state)
    for key, value in reference.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    assert all(m.update_stats for m in model if isinstance(m, norms.NormLayer))
