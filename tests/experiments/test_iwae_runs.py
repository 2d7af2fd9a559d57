"""Training on the importance-weighted bound with dynamically binarised data: the runner end to
end.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from test_runner import assert_same_run, final_parameters, interrupted_run, tiny_config

from natgrad.experiments import runner
from natgrad.experiments.binarize import DynamicBinarizer, binarize_once
from natgrad.experiments.data import load_run_data
from natgrad.experiments.metrics import evaluate
from natgrad.experiments.runner import derive_seed, resume, train
from natgrad.models import VAE

IWAE = {
    "model": {"kind": "vae", "sizes": [64, 16, 4], "objective": "iwae", "samples": 3},
    "data": {"dataset": "synthetic", "binarize": "dynamic"},
}


@pytest.fixture
def intensities(monkeypatch):
    """The synthetic images as intensities in [0.1, 0.9], so that dynamic binarisation draws new
    images.
    """

    def graded(config):
        data = load_run_data(config)
        return dataclasses.replace(data, train=0.1 + 0.8 * data.train, test=0.1 + 0.8 * data.test)

    monkeypatch.setattr(runner, "load_run_data", graded)


def test_an_iwae_run_on_dynamically_binarised_data_resumes_bitwise(
    tmp_path, monkeypatch, intensities
):
    reference = train(
        tiny_config(tmp_path, "reference", optimizer="kfac", steps=20, **IWAE), show_progress=False
    )
    stopped = interrupted_run(
        tmp_path, "resumed", 9, monkeypatch, optimizer="kfac", steps=20, **IWAE
    )
    resumed = resume(stopped, show_progress=False)
    assert (resumed.status, resumed.step) == ("completed", 20)
    assert_same_run(reference.run_dir, resumed.run_dir)


def test_every_batch_is_binarised_afresh(tmp_path, monkeypatch, intensities):
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []  # (intensities, binary images) per batch

    class Recording(DynamicBinarizer):
        def __call__(self, x):
            seen.append((x, super().__call__(x)))
            return seen[-1][1]

    monkeypatch.setattr(runner, "DynamicBinarizer", Recording)
    train(
        tiny_config(tmp_path, "run", optimizer="adam", lr=1e-3, steps=80, **IWAE),
        show_progress=False,
    )
    assert len(seen) == 80 and all(set(b.unique().tolist()) <= {0.0, 1.0} for _, b in seen)
    # 2,000 examples in batches of 50: steps 41-80 are the second epoch. Each example of the first
    # batch is drawn again there and gets another binary image (equal by chance with probability
    # < 0.82^64 per example at intensities in [0.1, 0.9]).
    second_x, second_b = torch.cat([x for x, _ in seen[40:]]), torch.cat([b for _, b in seen[40:]])
    first_x, first_b = seen[0]
    for x, b in zip(first_x, first_b):
        again = (second_x == x).all(1).nonzero()[0, 0]
        assert not torch.equal(second_b[again], b)


def test_evaluation_uses_sets_binarised_once_and_reports_every_bound(tmp_path, intensities):
    ev = {"every": 5, "iwae_samples": 20, "iwae_examples": 40, "bound_samples": [1, 4]}
    result = train(
        tiny_config(tmp_path, "run", optimizer="adam", lr=1e-3, steps=5, eval=ev, **IWAE),
        show_progress=False,
    )
    assert {"test.iwae_ll", "test.iwae_bound_k1", "test.iwae_bound_k4", "test.active_units"} <= set(
        result.metrics
    )
    model = VAE([64, 16, 4])
    model.load_state_dict(final_parameters(result.run_dir))
    data = runner.load_run_data(tiny_config(tmp_path, "run", **IWAE).data)
    generator = torch.Generator().manual_seed(derive_seed(0, "eval", 5))
    expected = evaluate(
        model, binarize_once(data.train), binarize_once(data.test), 1000, 20, 40, generator, [1, 4]
    )
    assert result.metrics == expected
