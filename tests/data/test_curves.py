"""The CURVES generator: spline maths, pen, determinism, shapes and ranges (small sizes only)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.interpolate import CubicSpline

from natgrad.data.curves import (
    CurvesRecipe,
    draw_knots,
    generate_curves,
    polyline_distance_sq,
    spline_points,
)

SMALL = CurvesRecipe(n_train=60, n_test=30)


def test_spline_matches_scipy_natural_cubic_spline():
    rng = np.random.default_rng(1)
    x, y = draw_knots(rng, 5, SMALL)
    xs, ys = spline_points(x, y, segments=40)
    for i in range(5):
        reference = CubicSpline(x[i], y[i], bc_type="natural")(xs[i])
        np.testing.assert_allclose(ys[i], reference, rtol=0, atol=1e-9)
    np.testing.assert_allclose(xs[:, [0, -1]], x[:, [0, 2]])


def test_knots_respect_margin_and_gap():
    x, y = draw_knots(np.random.default_rng(2), 2000, SMALL)
    low, high = SMALL.margin, SMALL.size - 1 - SMALL.margin
    assert x.min() >= low and x.max() <= high and y.min() >= low and y.max() <= high
    assert np.diff(x, axis=1).min() >= SMALL.min_gap - 1e-12


def test_distance_to_a_horizontal_segment():
    xs, ys = np.array([[3.0, 10.0]]), np.array([[5.0, 5.0]])
    dist = polyline_distance_sq(xs, ys, 28).reshape(28, 28)
    assert dist[5, 6] == pytest.approx(0.0)  # on the segment
    assert dist[8, 6] == pytest.approx(9.0, abs=1e-5)  # 3 rows below
    assert dist[5, 0] == pytest.approx(9.0, abs=1e-5)  # 3 columns left of the start


def test_shapes_range_and_ink():
    train, test = generate_curves(SMALL, seed=0)
    assert train.shape == (60, 784) and test.shape == (30, 784) and train.dtype == np.float32
    assert train.min() >= 0.0 and train.max() <= 1.0
    # every image has a stroke whose core reaches (nearly) full intensity
    assert (train.max(axis=1) > 0.9).all()
    assert 0.02 < train.mean() < 0.15


def test_deterministic_from_seed():
    a_train, a_test = generate_curves(SMALL, seed=3)
    b_train, b_test = generate_curves(SMALL, seed=3)
    c_train, _ = generate_curves(SMALL, seed=4)
    assert np.array_equal(a_train, b_train) and np.array_equal(a_test, b_test)
    assert not np.array_equal(a_train, c_train)


def test_test_set_continues_the_training_stream():
    train, test = generate_curves(SMALL, seed=5)
    joined, _ = generate_curves(CurvesRecipe(n_train=90, n_test=1), seed=5)
    assert np.array_equal(joined[:60], train) and np.array_equal(joined[60:90], test)


def test_impossible_margin_rejected():
    with pytest.raises(ValueError, match="margin=13.0 and min_gap=4.0 leave no room"):
        generate_curves(CurvesRecipe(n_train=1, n_test=1, margin=13.0), seed=0)
