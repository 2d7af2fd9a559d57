"""Dynamic binarisation: fresh Bernoulli draws per batch from a seeded, resumable generator; fixed
evaluation sets.
"""

from __future__ import annotations

import torch

from natgrad.experiments.binarize import DynamicBinarizer, binarize_once


def test_every_call_draws_afresh_from_a_reproducible_stream():
    x = torch.full((4000, 3), 0.3)
    a, b = DynamicBinarizer(7), DynamicBinarizer(7)
    first, second = a(x), a(x)
    assert set(first.unique().tolist()) == {0.0, 1.0}
    assert not torch.equal(first, second)
    assert torch.equal(first, b(x)) and torch.equal(second, b(x))
    # a pixel of intensity 0.3 is on 30% of the time: 12,000 draws, standard error 0.004
    assert abs(float(torch.cat([first, second]).mean()) - 0.3) < 0.02


def test_the_state_dict_resumes_the_stream():
    x = torch.rand(50, 8)
    binarizer = DynamicBinarizer(3)
    binarizer(x)
    state = binarizer.state_dict()
    expected = binarizer(x)
    resumed = DynamicBinarizer(99)
    resumed.load_state_dict(state)
    assert torch.equal(resumed(x), expected)


def test_the_evaluation_sets_are_the_same_on_every_call_whatever_the_global_seed():
    x = torch.rand(100, 8)
    torch.manual_seed(1)
    first = binarize_once(x)
    torch.manual_seed(2)
    assert torch.equal(binarize_once(x), first)
    assert not torch.equal(binarize_once(x, seed=5), first)
