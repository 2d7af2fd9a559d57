"""Mini-batches drawn without replacement, epoch by epoch, with a resumable state.

Each epoch is a fresh permutation from the sampler's own ``torch.Generator``; a batch is the next
``batch_size`` indices, and a new epoch starts when fewer than ``batch_size`` remain (the tail of an
epoch is skipped, so every batch has the same size). :meth:`state_dict` holds the generator state,
the current permutation and the cursor, so a resumed run sees exactly the same batches.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


class BatchSampler:
    """Index batches over ``num_examples`` examples, seeded by ``seed``.

    Raises:
        ValueError: ``batch_size`` is not in [1, num_examples].
    """

    def __init__(self, num_examples: int, batch_size: int, seed: int) -> None:
        if not 1 <= batch_size <= num_examples:
            raise ValueError(f"batch_size = {batch_size} must be in [1, {num_examples}] (the number of training examples)")
        self.num_examples = num_examples
        self.batch_size = batch_size
        self.generator = torch.Generator().manual_seed(seed)
        self.permutation = torch.empty(0, dtype=torch.long)
        self.cursor = 0
        self.epoch = 0

    def next_indices(self) -> Tensor:
        """The indices of the next batch, shape (batch_size,)."""
        if self.cursor + self.batch_size > self.permutation.numel():
            self.permutation = torch.randperm(self.num_examples, generator=self.generator)
            self.cursor = 0
            self.epoch += 1
        batch = self.permutation[self.cursor:self.cursor + self.batch_size]
        self.cursor += self.batch_size
        return batch

    def state_dict(self) -> dict[str, Any]:
        return {
            "generator": self.generator.get_state(),
            "permutation": self.permutation.clone(),
            "cursor": self.cursor,
            "epoch": self.epoch,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])
        self.permutation = state["permutation"].clone()
        self.cursor = int(state["cursor"])
        self.epoch = int(state["epoch"])
