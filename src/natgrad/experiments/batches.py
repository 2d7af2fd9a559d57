"""Mini-batches drawn without replacement, epoch by epoch, with a resumable state.

Each epoch is a fresh permutation from the sampler's own ``torch.Generator``; a batch is the next
``m_k`` indices, and a new epoch starts when fewer than ``m_k`` remain (the tail of an epoch is
skipped, so every batch has exactly ``m_k`` distinct examples). The size ``m_k`` of batch ``k``
(counting from 1) is ``batch_size`` under the 'fixed' schedule, and under the 'exponential' one
``m_k = min(floor(batch_size * 2^{(k-1)/b}), N)`` with ``b`` chosen so that ``m_k = N`` at
``k = full_at`` (Martens & Grosse 2015, section 13;
:func:`natgrad.optim.kfac.exponential_batch_size`). :meth:`state_dict` holds the generator state,
the current permutation, the cursor and the number of batches drawn, so a resumed run sees exactly
the same batches.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from natgrad.optim.kfac import exponential_batch_size
from natgrad.validation import require

SCHEDULES = ("fixed", "exponential")


class BatchSampler:
    """Index batches over ``num_examples`` examples, seeded by ``seed``.

    Args:
        num_examples: N, the training-set size.
        batch_size: the constant size ('fixed') or the first batch's size ('exponential').
        seed: seed of the sampler's generator.
        schedule: 'fixed' or 'exponential' (see the module docstring).
        full_at: the batch index at which the exponential schedule reaches N.

    Raises:
        ValueError: ``batch_size`` is not in [1, num_examples], or ``schedule`` is unknown.
    """

    def __init__(
        self,
        num_examples: int,
        batch_size: int,
        seed: int,
        schedule: str = "fixed",
        full_at: int = 500,
    ) -> None:
        require(
            1 <= batch_size <= num_examples,
            "batch_size",
            batch_size,
            f"an integer in [1, {num_examples}] (the number of training examples)",
        )
        require(schedule in SCHEDULES, "batch_schedule", schedule, ", ".join(SCHEDULES))
        self.num_examples = num_examples
        self.batch_size = batch_size
        self.schedule = schedule
        self.full_at = full_at
        self.generator = torch.Generator().manual_seed(seed)
        self.permutation = torch.empty(0, dtype=torch.long)
        self.cursor = 0
        self.epoch = 0
        self.batches = 0

    def size(self, k: int) -> int:
        """``m_k``, the size of batch ``k`` (counting from 1) under the schedule."""
        if self.schedule == "fixed":
            return self.batch_size
        return exponential_batch_size(
            k, self.num_examples, initial=self.batch_size, full_at=self.full_at
        )

    def next_indices(self) -> Tensor:
        """The indices of the next batch, shape (m_k,), distinct examples."""
        size = self.size(self.batches + 1)
        if self.cursor + size > self.permutation.numel():
            self.permutation = torch.randperm(self.num_examples, generator=self.generator)
            self.cursor = 0
            self.epoch += 1
        batch = self.permutation[self.cursor : self.cursor + size]
        self.cursor += size
        self.batches += 1
        return batch

    def state_dict(self) -> dict[str, Any]:
        """The generator and the current permutation and position (exact resume)."""
        return {
            "generator": self.generator.get_state(),
            "permutation": self.permutation.clone(),
            "cursor": self.cursor,
            "epoch": self.epoch,
            "batches": self.batches,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.generator.set_state(state["generator"])
        self.permutation = state["permutation"].clone()
        self.cursor = int(state["cursor"])
        self.epoch = int(state["epoch"])
        self.batches = int(state["batches"])
