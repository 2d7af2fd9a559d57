"""The cheap finiteness check agrees with torch.isfinite on every kind of non-finite entry."""

from __future__ import annotations

import pytest
import torch

from natgrad.finite import all_finite


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_one_bad_entry_anywhere_is_found(dtype, bad):
    clean = torch.randn(7, 5, dtype=torch.float64).to(dtype)
    assert all_finite([clean, clean[0]])
    for index in [(0, 0), (3, 2), (6, 4)]:
        dirty = clean.clone()
        dirty[index] = bad
        assert not all_finite([clean, dirty])
        assert not bool(torch.isfinite(dirty).all())


def test_huge_finite_values_do_not_overflow_into_a_false_alarm():
    big = torch.full((1000,), 3e38)  # a plain sum overflows to inf in float32
    assert not torch.isfinite(big.sum())
    assert all_finite([big])


def test_no_tensors_are_finite():
    assert all_finite([])
