"""Regenerated FACES (Hinton & Salakhutdinov 2006; split of Martens 2010, Martens & Grosse 2015).

Published: 165,600 images of 25x25 made by rotating, scaling, cropping and subsampling the 400
Olivetti faces (40 people x 10), 414 per original; every pixel shifted to zero mean, then the whole
set multiplied by one number so the average pixel variance is 1; ordered by person, training = the
first 103,500 (people 1-25), test = the last 41,400 (people 31-40), people 26-30 unused. The ranges
usually quoted, rotation -90..+90 degrees and scale 1.4..1.8, could not be verified.

natgrad's choices (recorded in the manifest through :class:`FacesRecipe`):

* each variant draws angle ~ U(rotation) and scale ~ U(scale) from the seeded generator (random,
  not a grid), in the order original 1..400, variant 1..414;
* "scale s, crop, subsample": the 64x64 original is magnified s times about its centre, the central
  ``crop`` x ``crop`` square (in 64x64 pixel units) is kept and subsampled to 25x25; i.e. output
  pixel (u, v) samples the original at centre + R(angle) [(u, v) - 12] * crop / (25 s), so a
  positive angle turns the face clockwise as displayed (rows downwards);
* each output pixel averages ``supersample`` x ``supersample`` samples interpolated with splines
  of order ``spline_order`` (2 x 2 bilinear by default: anti-aliasing);
  samples falling outside the original take the nearest edge pixel;
* normalisation statistics (per-pixel mean, one global scale) come from all 165,600 images, as the
  original file was normalised as a whole; only train and test are stored.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage
from tqdm import tqdm

# Bump whenever the code changes the generated pixels: caches record it and are rebuilt on mismatch.
GENERATOR_VERSION = 1

SOURCE_SIZE = 64
IMAGES_PER_PERSON = 10


@dataclass(frozen=True)
class FacesRecipe:
    """Free parameters of the FACES generator (defaults calibrated to PCA-30 test error ~135)."""

    variants: int = 414
    out_size: int = 25
    rotation_deg: tuple[float, float] = (-90.0, 90.0)
    scale: tuple[float, float] = (1.4, 1.8)
    crop: float = 64.0
    supersample: int = 2
    spline_order: int = 1
    train_people: int = 25
    test_people: int = 10

    def to_dict(self) -> dict:
        """The recipe as a JSON-ready dict."""
        return asdict(self)


def sample_offsets(recipe: FacesRecipe) -> np.ndarray:
    """Sample positions relative to the window centre in output-pixel units: (out**2 * S**2, 2)."""
    s = recipe.supersample
    centre = (recipe.out_size - 1) / 2.0
    sub = (np.arange(s) + 0.5) / s - 0.5
    grid = (np.arange(recipe.out_size)[:, None] + sub[None, :]).reshape(-1) - centre  # (out * S,)
    rows, cols = np.meshgrid(grid, grid, indexing="ij")
    # order the samples so that each output pixel's S x S samples are contiguous
    shape = (recipe.out_size, s, recipe.out_size, s)
    rows = rows.reshape(shape).transpose(0, 2, 1, 3).reshape(-1)
    cols = cols.reshape(shape).transpose(0, 2, 1, 3).reshape(-1)
    return np.stack([rows, cols], axis=1)


def transform_one(
    image: np.ndarray, angles: np.ndarray, scales: np.ndarray, recipe: FacesRecipe
) -> np.ndarray:
    """All variants of one 64x64 original: float32 (len(angles), out**2), un-normalised grey levels.

    Source coordinate of a sample at offset o (output pixels) for angle a and scale s:
    centre + R(a) o * crop / (out_size * s), R the 2-D rotation (row, column axes).
    """
    offsets = sample_offsets(recipe)  # (P, 2)
    factor = recipe.crop / (recipe.out_size * scales)  # (V,)
    cos, sin = np.cos(np.deg2rad(angles))[:, None], np.sin(np.deg2rad(angles))[:, None]
    dr, dc = offsets[None, :, 0] * factor[:, None], offsets[None, :, 1] * factor[:, None]  # (V, P)
    centre = (SOURCE_SIZE - 1) / 2.0
    coords = np.stack([centre + cos * dr - sin * dc, centre + sin * dr + cos * dc])  # (2, V, P)
    samples = ndimage.map_coordinates(
        image, coords.reshape(2, -1), order=recipe.spline_order, mode="nearest"
    )
    per_pixel = samples.reshape(len(angles), recipe.out_size**2, recipe.supersample**2)
    return per_pixel.mean(axis=2).astype(np.float32)


def draw_parameters(
    rng: np.random.Generator, count: int, recipe: FacesRecipe
) -> tuple[np.ndarray, np.ndarray]:
    """Angles (degrees) and scales for ``count`` variants, uniform on the recipe's ranges."""
    angles = rng.uniform(*recipe.rotation_deg, size=count)
    scales = rng.uniform(*recipe.scale, size=count)
    return angles, scales


def normalise(images: np.ndarray) -> tuple[np.ndarray, dict]:
    """Per-pixel zero mean, then one global factor so the mean per-pixel variance is 1 (in place).

    Returns the images and the statistics (float64 accumulation) for the manifest.
    """
    mean = images.mean(axis=0, dtype=np.float64)
    images -= mean.astype(np.float32)
    variance = float(np.mean(images.var(axis=0, dtype=np.float64)))
    factor = 1.0 / np.sqrt(variance)
    images *= np.float32(factor)
    return images, {
        "mean_pixel_before": float(mean.mean()),
        "pixel_variance_before": variance,
        "factor": factor,
    }


def generate_faces(
    sources: np.ndarray, recipe: FacesRecipe, seed: int, *, progress: bool = False
) -> tuple[np.ndarray, np.ndarray, dict]:
    """Deterministic FACES from ``sources`` (n_people * 10, 64, 64), ordered by person.

    Returns:
        train (train_people * 10 * variants, out**2), test (test_people * 10 * variants, out**2),
        both float32 and normalised over all generated images, and the normalisation statistics.
    """
    n_sources = sources.shape[0]
    if n_sources % IMAGES_PER_PERSON or sources.shape[1:] != (SOURCE_SIZE, SOURCE_SIZE):
        raise ValueError(f"sources must be (people * 10, 64, 64), got {sources.shape}")
    people = n_sources // IMAGES_PER_PERSON
    if recipe.train_people + recipe.test_people > people:
        raise ValueError(
            f"train_people + test_people = {recipe.train_people + recipe.test_people} > {people} "
            "people"
        )
    rng = np.random.default_rng(seed)
    angles, scales = draw_parameters(rng, n_sources * recipe.variants, recipe)
    images = np.empty((n_sources * recipe.variants, recipe.out_size**2), dtype=np.float32)
    for k in tqdm(range(n_sources), desc="faces", unit="original", disable=not progress):
        rows = slice(k * recipe.variants, (k + 1) * recipe.variants)
        images[rows] = transform_one(
            sources[k].astype(np.float64), angles[rows], scales[rows], recipe
        )
    images, stats = normalise(images)
    per_person = IMAGES_PER_PERSON * recipe.variants
    train = images[: recipe.train_people * per_person]
    test = images[(people - recipe.test_people) * per_person :]
    return train, test, stats
