"""Dynamic binarisation of pixel intensities (``data.binarize = "dynamic"``).

Each time a training batch is drawn its pixels are sampled afresh, ``x_bin ~ Bernoulli(x)`` with
``x`` the intensity in [0, 1], so the model never sees the same binary image twice: the MNIST of
Burda et al. (2016; their footnote on the versions of MNIST and appendix D [S: survae's dataset
docstring]), after Salakhutdinov & Murray (2008). The draws come from the run's own seeded
generator, saved in every checkpoint, so a run is reproducible and resumes bitwise.

Evaluation uses the train and test sets binarised *once* with :data:`EVALUATION_SEED`, the same for
every run and seed, so every cell of a grid is scored on the same binary images.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

#: The allowed values of ``data.binarize`` (omitted: the intensities are used as they are).
BINARIZATIONS = ("dynamic",)
#: Seed of the one-off binarisation of the evaluation sets (independent of the run's seed).
EVALUATION_SEED = 20160101


def binarize_once(x: Tensor, seed: int = EVALUATION_SEED) -> Tensor:
    """``Bernoulli(x)`` with a generator seeded by ``seed``: the same binary images on every
    call.
    """
    return torch.bernoulli(x, generator=torch.Generator().manual_seed(seed))


class DynamicBinarizer:
    """Samples every batch it is given as ``Bernoulli(x)`` from its own generator (module
    docstring).
    """

    def __init__(self, seed: int) -> None:
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self, x: Tensor) -> Tensor:
        """A fresh binarisation of ``x`` (pixels as probabilities)."""
        return torch.bernoulli(x, generator=self.generator)

    def state_dict(self) -> dict[str, Any]:
        """The generator's state (exact resume)."""
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.generator.set_state(state["generator"])
