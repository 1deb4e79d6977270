"""check_episode's label checks as one device-side assertion (the GPU path, exercised here on CPU tensors)."""

from __future__ import annotations

import pytest
import torch

from fewshot.learners.base import _assert_labels_on_device


def test_valid_labels_pass():
    _assert_labels_on_device(torch.tensor([0, 0, 1, 2]), torch.tensor([2, 1, 0]), 3, 7)


@pytest.mark.parametrize(
    ("support", "query"),
    [([0, 1, 3], [0]), ([0, 1, -1], [0]), ([0, 0, 1], [0]), ([0, 1, 2], [3]), ([0, 1, 2], [-1])],
)
def test_bad_labels_fail_the_assertion_naming_the_episode(support, query):
    with pytest.raises(RuntimeError, match=r"episode 7: support_y must hold every label 0..2"):
        _assert_labels_on_device(torch.tensor(support), torch.tensor(query), 3, 7)


def test_empty_support_is_refused_at_once():
    with pytest.raises(ValueError, match="episode 7: support_y must hold the labels 0..2, got none"):
        _assert_labels_on_device(torch.tensor([], dtype=torch.int64), torch.tensor([0]), 3, 7)
