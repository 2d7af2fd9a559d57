"""The FACES generator: exact geometry, normalisation, person order and split (small sizes only)."""

from __future__ import annotations

import numpy as np
import pytest

from natgrad.data.faces import FacesRecipe, generate_faces, normalise, transform_one


def _sources(people: int = 40, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 255, size=(people * 10, 64, 64))


def test_identity_transform_reproduces_the_image():
    image = _sources(1)[0]
    recipe = FacesRecipe(out_size=64, crop=64.0, supersample=1)
    out = transform_one(image, np.array([0.0]), np.array([1.0]), recipe)
    np.testing.assert_allclose(out[0].reshape(64, 64), image, rtol=0, atol=1e-3)


@pytest.mark.parametrize("angle, turns", [(90.0, -1), (-90.0, 1), (180.0, 2)])
def test_quarter_turns_are_exact_rotations(angle, turns):
    # Positive angles turn the face clockwise as displayed (np.rot90 turns counter-clockwise).
    image = _sources(1)[0]
    recipe = FacesRecipe(out_size=64, crop=64.0, supersample=1)
    out = transform_one(image, np.array([angle]), np.array([1.0]), recipe)[0].reshape(64, 64)
    np.testing.assert_allclose(out, np.rot90(image, k=turns), atol=1e-3)


def test_scale_two_picks_the_central_half():
    # Output 32x32 over crop 64 at scale 2: output pixel u samples source 31.5 + (u - 15.5), i.e.
    # rows 16..47.
    image = _sources(1)[0]
    recipe = FacesRecipe(out_size=32, crop=64.0, supersample=1)
    out = transform_one(image, np.array([0.0]), np.array([2.0]), recipe)[0].reshape(32, 32)
    np.testing.assert_allclose(out, image[16:48, 16:48], atol=1e-3)


def test_supersampling_averages_a_box():
    # A 2x2 supersample of a 64->32 map (scale 1) averages each 2x2 block exactly.
    image = _sources(1)[0]
    recipe = FacesRecipe(out_size=32, crop=64.0, supersample=2)
    out = transform_one(image, np.array([0.0]), np.array([1.0]), recipe)[0].reshape(32, 32)
    blocks = image.reshape(32, 2, 32, 2).mean(axis=(1, 3))
    np.testing.assert_allclose(out, blocks, atol=1e-3)


def test_normalise_zero_mean_unit_average_variance():
    images = np.random.default_rng(1).normal(3.0, 2.0, size=(500, 9)).astype(np.float32)
    images[:, 0] *= 5
    out, stats = normalise(images.copy())
    np.testing.assert_allclose(out.mean(axis=0), 0.0, atol=1e-5)
    assert out.var(axis=0).mean() == pytest.approx(1.0, rel=1e-5)
    # one global factor: per-pixel standard deviations keep their ratios
    ratio = images.std(axis=0) / out.std(axis=0)
    np.testing.assert_allclose(ratio, ratio[0], rtol=1e-4)
    assert stats["factor"] == pytest.approx(1 / ratio[0], rel=1e-4)


def test_shapes_and_determinism():
    sources = _sources()
    recipe = FacesRecipe(variants=2)
    train, test, stats = generate_faces(sources, recipe, seed=0)
    assert train.shape == (25 * 10 * 2, 625) and test.shape == (10 * 10 * 2, 625)
    again_train, again_test, _ = generate_faces(sources, recipe, seed=0)
    assert np.array_equal(train, again_train) and np.array_equal(test, again_test)
    other, _, _ = generate_faces(sources, recipe, seed=1)
    assert not np.array_equal(train, other)
    assert train.dtype == np.float32 and np.isfinite(train).all()


def test_images_are_ordered_by_person_with_martens_split():
    # Person p's originals are constant p, so all their variants are constant p before
    # normalisation.
    person = np.repeat(np.arange(1, 41), 10)
    sources = np.broadcast_to(person[:, None, None], (400, 64, 64)).astype(np.float64)
    train, test, stats = generate_faces(sources, FacesRecipe(variants=3), seed=0)
    centre = person.mean()  # every person contributes equally to the per-pixel mean
    expected_train = (np.repeat(np.arange(1, 26), 30) - centre) * stats["factor"]
    expected_test = (np.repeat(np.arange(31, 41), 30) - centre) * stats["factor"]
    np.testing.assert_allclose(
        train, np.broadcast_to(expected_train[:, None], train.shape), atol=1e-4
    )
    np.testing.assert_allclose(test, np.broadcast_to(expected_test[:, None], test.shape), atol=1e-4)


def test_too_few_people_rejected():
    with pytest.raises(ValueError, match="train_people \\+ test_people = 35 > 30 people"):
        generate_faces(_sources(30), FacesRecipe(variants=1), seed=0)
