"""The batch sampler: sizes follow the schedule, batches are without replacement, state resumes
exactly.
"""

from __future__ import annotations

import pytest
import torch

from natgrad.experiments.batches import BatchSampler
from natgrad.optim.kfac import exponential_batch_size


def test_fixed_batches_are_disjoint_within_an_epoch():
    sampler = BatchSampler(100, 30, seed=0)
    batches = [sampler.next_indices() for _ in range(4)]
    assert [b.numel() for b in batches] == [30] * 4
    first_epoch = torch.cat(batches[:3])
    # the 10-example tail is skipped
    assert first_epoch.unique().numel() == 90 and sampler.epoch == 2


def test_exponential_sizes_follow_section_13_and_grow_to_the_training_set():
    sampler = BatchSampler(1000, 10, seed=0, schedule="exponential", full_at=40)
    sizes = []
    for _ in range(45):
        batch = sampler.next_indices()
        assert batch.unique().numel() == batch.numel()  # without replacement
        sizes.append(batch.numel())
    assert sizes[:39] == [
        exponential_batch_size(k, 1000, initial=10, full_at=40) for k in range(1, 40)
    ]
    # the whole set from batch full_at on (exponential_batch_size(40, ...) rounds 2^log2(100) * 10
    # down to 999)
    assert (
        sizes[0] == 10 and sizes[39:] == [1000] * 6 and sizes == sorted(sizes) and sizes[38] < 1000
    )


def test_state_dict_resumes_the_same_batches():
    original = BatchSampler(500, 8, seed=3, schedule="exponential", full_at=30)
    for _ in range(17):
        original.next_indices()
    copy = BatchSampler(500, 8, seed=99, schedule="exponential", full_at=30)
    copy.load_state_dict(original.state_dict())
    for _ in range(20):
        assert torch.equal(original.next_indices(), copy.next_indices())


def test_invalid_arguments_name_the_field():
    with pytest.raises(
        ValueError, match=r"Invalid batch_size: 0; allowed: an integer in \[1, 10\]"
    ):
        BatchSampler(10, 0, seed=0)
    with pytest.raises(
        ValueError, match="Invalid batch_schedule: 'linear'; allowed: fixed, exponential"
    ):
        BatchSampler(10, 5, seed=0, schedule="linear")
