"""Regenerated CURVES (Hinton & Salakhutdinov 2006, Science, and supporting material).

Published: 28x28 images in [0, 1] of curves defined by three random 2-D points (intrinsic dimension
6); 20,000 training and 10,000 test images. Secondary summaries add that the points have increasing
x and that a cubic spline through them is inked into the image. Everything else is natgrad's choice
(recorded in the cache manifest through :class:`CurvesRecipe`):

* points: x_0 < x_1 < x_2 uniform on ``[margin, size - 1 - margin]`` with gaps of at least
  ``min_gap`` pixels; y_i uniform on the same interval (pixel-centre coordinates);
* curve: the natural cubic spline y = S(x) through the three points, drawn from x_0 to x_2 as a
  polyline of ``segments`` pieces (parts leaving the image are simply not seen);
* pen: intensity ``exp(-d^2 / (2 pen_sigma^2))`` at distance d from the polyline (an anti-aliased
  Gaussian pen, truncated to 0 beyond 4 pen_sigma), times ``peak`` and clipped to [0, 1].

The training images are the first ``n_train`` drawn from the seeded generator, the test images the
next ``n_test``; generation is batched and vectorised over pixels and segments.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from tqdm import tqdm

# Bump whenever the code changes the generated pixels: caches record it and are rebuilt on mismatch.
GENERATOR_VERSION = 1

_BATCH = 50  # images per vectorised step; temporaries stay ~10 MB
_CUTOFF_SIGMAS = 4.0  # the pen is truncated where it falls below exp(-8) = 3.4e-4


@dataclass(frozen=True)
class CurvesRecipe:
    """Free parameters of the CURVES generator (defaults calibrated to PCA-18 test error ~5.9)."""

    n_train: int = 20000
    n_test: int = 10000
    size: int = 28
    margin: float = 5.5
    min_gap: float = 4.0
    segments: int = 48
    pen_sigma: float = 1.0
    peak: float = 1.0

    def to_dict(self) -> dict:
        """The recipe as a JSON-ready dict."""
        return asdict(self)


def spline_points(x: np.ndarray, y: np.ndarray, segments: int) -> tuple[np.ndarray, np.ndarray]:
    """Sample the natural cubic spline through three knots per row at ``segments + 1`` x positions.

    With knots x_0 < x_1 < x_2, gaps h_i = x_{i+1} - x_i and second derivatives M_0 = M_2 = 0,
    M_1 = 3 [(y_2 - y_1)/h_1 - (y_1 - y_0)/h_0] / (h_0 + h_1); on [x_i, x_{i+1}]
    S(t) = M_i (x_{i+1}-t)^3/(6h_i) + M_{i+1}(t-x_i)^3/(6h_i) + (y_i/h_i - M_i h_i/6)(x_{i+1}-t)
           + (y_{i+1}/h_i - M_{i+1} h_i/6)(t - x_i).

    Args:
        x: the knots' abscissae, shape (B, 3), strictly increasing along axis 1.
        y: the knots' ordinates, shape (B, 3).
        segments: the number of intervals sampled between ``x_0`` and ``x_2``.

    Returns:
        xs, ys of shape (B, segments + 1).
    """
    h = np.diff(x, axis=1)  # (B, 2)
    m1 = 3.0 * ((y[:, 2] - y[:, 1]) / h[:, 1] - (y[:, 1] - y[:, 0]) / h[:, 0]) / (h[:, 0] + h[:, 1])
    m = np.stack([np.zeros_like(m1), m1, np.zeros_like(m1)], axis=1)  # (B, 3)
    frac = np.linspace(0.0, 1.0, segments + 1)
    xs = x[:, :1] + frac[None, :] * (x[:, 2:] - x[:, :1])  # (B, S+1)
    seg = (xs > x[:, 1:2]).astype(np.intp)  # 0 on [x0, x1], 1 on (x1, x2]
    take = lambda a, off: np.take_along_axis(a, seg + off, axis=1)  # noqa: E731
    xl, xr, yl, yr, ml, mr = take(x, 0), take(x, 1), take(y, 0), take(y, 1), take(m, 0), take(m, 1)
    hs = xr - xl
    ys = (
        ml * (xr - xs) ** 3 / (6 * hs)
        + mr * (xs - xl) ** 3 / (6 * hs)
        + (yl / hs - ml * hs / 6) * (xr - xs)
        + (yr / hs - mr * hs / 6) * (xs - xl)
    )
    return xs, ys


def polyline_distance_sq(xs: np.ndarray, ys: np.ndarray, size: int) -> np.ndarray:
    """Squared distance from every pixel centre of a size x size grid to each polyline: (B,
    size**2).
    """
    row, col = np.meshgrid(
        np.arange(size, dtype=np.float32), np.arange(size, dtype=np.float32), indexing="ij"
    )
    px, py = col.reshape(1, -1, 1), row.reshape(1, -1, 1)  # pixel (x = column, y = row), (1, P, 1)
    # float32 halves the work; error << 1e-3 px
    xs, ys = (
        xs.astype(np.float32),
        ys.astype(np.float32),
    )
    ax, ay = xs[:, None, :-1], ys[:, None, :-1]  # segment starts, (B, 1, S)
    dx, dy = np.diff(xs, axis=1)[:, None, :], np.diff(ys, axis=1)[:, None, :]
    length_sq = np.maximum(dx * dx + dy * dy, 1e-12)
    t = np.clip(((px - ax) * dx + (py - ay) * dy) / length_sq, 0.0, 1.0)  # (B, P, S)
    ex, ey = px - ax - t * dx, py - ay - t * dy
    return (ex * ex + ey * ey).min(axis=2)


def draw_knots(
    rng: np.random.Generator, count: int, recipe: CurvesRecipe
) -> tuple[np.ndarray, np.ndarray]:
    """Three knots per image: sorted x with gaps >= min_gap, y uniform; both within the margins."""
    low, high = recipe.margin, recipe.size - 1 - recipe.margin
    slack = high - low - 2 * recipe.min_gap
    if slack <= 0:
        raise ValueError(
            f"margin={recipe.margin} and min_gap={recipe.min_gap} leave no room in "
            f"size={recipe.size}"
        )
    # one row per image, so the first n images never depend on count
    uniform = rng.random((count, 6))
    x = low + np.sort(uniform[:, :3] * slack, axis=1) + recipe.min_gap * np.arange(3)
    y = low + uniform[:, 3:] * (high - low)
    return x, y


def render(x: np.ndarray, y: np.ndarray, recipe: CurvesRecipe) -> np.ndarray:
    """Ink the splines through knots (x, y) with the Gaussian pen: float32 (B, size**2) in [0,
    1].
    """
    xs, ys = spline_points(x, y, recipe.segments)
    dist_sq = polyline_distance_sq(xs, ys, recipe.size)
    reach = (_CUTOFF_SIGMAS * recipe.pen_sigma) ** 2
    ink = np.where(
        dist_sq < reach, recipe.peak * np.exp(-dist_sq / (2.0 * recipe.pen_sigma**2)), 0.0
    )
    return np.clip(ink, 0.0, 1.0).astype(np.float32)


def generate_curves(
    recipe: CurvesRecipe, seed: int, *, progress: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic CURVES: (train, test) float32 of shapes (n_train, size**2), (n_test,
    size**2).
    """
    rng = np.random.default_rng(seed)
    total = recipe.n_train + recipe.n_test
    x, y = draw_knots(rng, total, recipe)
    images = np.empty((total, recipe.size**2), dtype=np.float32)
    with tqdm(total=total, desc="curves", unit="img", disable=not progress) as bar:
        for start in range(0, total, _BATCH):
            stop = min(start + _BATCH, total)
            images[start:stop] = render(x[start:stop], y[start:stop], recipe)
            bar.update(stop - start)
    return images[: recipe.n_train], images[recipe.n_train :]
