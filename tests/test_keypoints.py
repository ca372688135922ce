"""Local features: the mirror image's RootSIFT by permutation equals SIFT run on the flipped photo."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from oesir_cli.alignment import ratio_matches
from oesir_cli.imageio import load_rgb
from oesir_cli.keypoints import extract, mirrored

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "photos"


def test_mirrored_features_equal_sift_on_the_flipped_photo():
    rgb = load_rgb(EXAMPLES / "astronaut.jpg")
    w = rgb.shape[1]
    by_permutation = mirrored(extract(rgb, 500), w)
    on_flipped = extract(np.ascontiguousarray(rgb[:, ::-1]), 500)
    a, b = by_permutation.keypoints, on_flipped.keypoints
    near = np.hypot(a[:, None, 0] - b[None, :, 0], a[:, None, 1] - b[None, :, 1]) <= 1.0
    same_size = np.abs(a[:, None, 2] - b[None, :, 2]) <= 0.05 * b[None, :, 2]
    angle = np.abs(a[:, None, 3] - b[None, :, 3]) % 360
    same_angle = np.minimum(angle, 360 - angle) <= 3.0
    pairs = np.argwhere(near & same_size & same_angle)
    assert len(pairs) >= 0.8 * len(b), (len(pairs), len(b))
    da = by_permutation.descriptors[pairs[:, 0]].astype(np.float32)
    db = on_flipped.descriptors[pairs[:, 1]].astype(np.float32)
    err = np.linalg.norm(da - db, axis=1) / np.linalg.norm(db, axis=1)
    assert np.median(err) < 0.02 and np.mean(err < 0.1) > 0.9, (np.median(err), np.mean(err < 0.1))
    # and not trivially: the unpermuted descriptors differ
    plain = extract(rgb, 500).descriptors[pairs[:, 0]].astype(np.float32)
    assert np.median(np.linalg.norm(plain - db, axis=1) / np.linalg.norm(db, axis=1)) > 0.3


def test_mirrored_twice_is_the_identity():
    f = extract(load_rgb(EXAMPLES / "coffee.jpg"), 200)
    back = mirrored(mirrored(f, 640), 640)
    assert np.array_equal(back.descriptors, f.descriptors)
    assert np.allclose(back.keypoints, f.keypoints, atol=1e-3)


def test_ratio_matches_equals_opencv_brute_force():
    """The matrix-product ratio test gives exactly OpenCV's BFMatcher pairs, in order, on RootSIFT descriptors.

    RootSIFT bytes are integers, so every dot product and norm is exact in float32.
    """
    rgb = load_rgb(EXAMPLES / "astronaut.jpg")
    a = extract(rgb, 600).descriptors.astype(np.float32)
    b = extract(cv2.resize(rgb, None, fx=0.7, fy=0.7), 600).descriptors.astype(np.float32)
    knn = cv2.BFMatcher(cv2.NORM_L2).knnMatch(a, b, k=2)
    expected = [(m.queryIdx, m.trainIdx) for m, n in knn if m.distance < 0.8 * n.distance]
    got = [tuple(p) for p in ratio_matches(a, b).tolist()]
    assert len(expected) > 50
    assert got == expected


def test_extract_where_keeps_keypoints_inside_the_mask():
    rgb = load_rgb(EXAMPLES / "astronaut.jpg")
    where = np.zeros(rgb.shape[:2], bool)
    where[100:300, 150:350] = True
    f = extract(rgb, 300, where)
    assert len(f) > 20
    x, y = f.keypoints[:, 0], f.keypoints[:, 1]
    assert ((x >= 149) & (x <= 351) & (y >= 99) & (y <= 301)).all()
    assert len(extract(rgb, 300, np.zeros_like(where))) == 0


def test_extract_where_spends_its_budget_inside_the_mask():
    # a faint patch beside strong texture: the budget must go to the patch's own keypoints, not to the texture's
    # strongest ones that the mask then throws away (OpenCV's SIFT cuts to `nfeatures` before it masks)
    rng = np.random.default_rng(3)
    grey = cv2.resize(rng.integers(0, 255, (40, 80), dtype=np.uint8), (640, 320), interpolation=cv2.INTER_CUBIC)
    faint = cv2.resize(rng.integers(100, 156, (20, 20), dtype=np.uint8), (160, 160), interpolation=cv2.INTER_CUBIC)
    grey[80:240, 440:600] = faint
    rgb = np.repeat(grey[:, :, None], 3, axis=2)
    where = np.zeros(grey.shape, bool)
    where[80:240, 440:600] = True
    inside = extract(rgb, 10_000, where, max_side=None)
    assert len(inside) > 60
    f = extract(rgb, 50, where, max_side=None)
    assert len(f) == 50
    x, y = f.keypoints[:, 0], f.keypoints[:, 1]
    assert ((x >= 439) & (x <= 601) & (y >= 79) & (y <= 241)).all()
    assert len(extract(rgb, 50, None, max_side=None)) == 50  # the whole photo: its own 50 strongest
