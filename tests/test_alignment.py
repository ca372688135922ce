"""The alignment module: robust fits, what an aligned original explains, the host/donor rules."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from oesir_cli.alignment import (
    HOST_EXPLAINED_SHARE,
    HOST_INLIER_HULL_SHARE,
    SEARCH_FIT,
    agreement_over,
    edge_agreement_over,
    explained_by,
    fit_similarity,
    is_host_relation,
    pixel_agreements,
)
from oesir_cli.search import DEFAULT_PARAMS
from oesir_cli.search.region import changed_region


def _texture(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return cv2.resize(rng.integers(0, 255, (30, 40, 3), dtype=np.uint8), (400, 300), interpolation=cv2.INTER_CUBIC)


def test_explained_counts_the_frame_apart():
    """A central paste leaves the host all of the frame; the donor explains the middle only."""
    host, donor = _texture(3), _texture(4)
    query = host.copy()
    query[60:240, 80:320] = donor[60:240, 80:320]  # 36% of the photo, away from the edges
    pts = np.array([[x, y] for x in range(90, 320, 40) for y in range(70, 240, 40)], np.float64)
    as_host, as_donor = explained_by(query, host, pts, pts), explained_by(query, donor, pts, pts)
    assert abs(as_host.share - 0.64) < 0.05 and as_host.frame > 0.95
    assert abs(as_donor.share - 0.36) < 0.05 and as_donor.frame < 0.05
    assert as_host.host_score > as_donor.host_score + 0.5
    assert np.allclose(changed_region(as_host.changed, DEFAULT_PARAMS), [80, 60, 320, 240], atol=4)


def test_fit_similarity_recovers_a_transform_despite_outliers_and_is_repeatable():
    rng = np.random.default_rng(1)
    src = rng.random((60, 2)) * 400
    angle, scale, t = np.deg2rad(12), 0.7, np.array([30.0, -12.0])
    r = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    dst = src @ r.T + t
    dst[:15] = rng.random((15, 2)) * 400  # a quarter are wrong matches
    a, inl = fit_similarity(src, dst, SEARCH_FIT)
    assert np.allclose(a[:, :2], r, atol=1e-3) and np.allclose(a[:, 2], t, atol=0.5)
    assert inl[15:].all() and inl[:15].sum() <= 1
    a2, inl2 = fit_similarity(src, dst, SEARCH_FIT)
    assert np.array_equal(a, a2) and np.array_equal(inl, inl2)
    assert fit_similarity(src[:1], dst[:1], SEARCH_FIT)[0] is None


def test_host_relation_rule():
    spread = np.array([[10, 10], [390, 10], [390, 290], [10, 290]], np.float32)  # inliers all over a 400x300 photo
    cluster = np.array([[100, 100], [140, 100], [140, 130], [100, 130]], np.float32)
    assert is_host_relation(HOST_EXPLAINED_SHARE, cluster, 400, 300)
    assert not is_host_relation(HOST_EXPLAINED_SHARE - 0.01, cluster, 400, 300)
    assert is_host_relation(0.0, spread, 400, 300)  # much changed, but the inliers span the photo
    assert HOST_INLIER_HULL_SHARE > (40 * 30) / (400 * 300)


def test_pixels_confirm_a_pasted_part_only_under_its_own_transform():
    """A part pasted rotated and shrunk: its source, warped by that transform, agrees with it; another photo or
    another transform does not."""
    donor, other, host = _texture(5), _texture(6), _texture(7)
    angle, scale = 20.0, 0.6
    a = cv2.getRotationMatrix2D((200.0, 150.0), angle, scale)
    a[:, 2] += [-40.0, 20.0]
    moved = cv2.warpAffine(donor, a, (400, 300))
    mask = np.zeros((300, 400), bool)
    mask[120:200, 150:260] = True  # inside the warped donor
    query = host.copy()
    query[mask] = moved[mask]
    assert agreement_over(query, mask, donor, a) > 0.9
    assert agreement_over(query, mask, other, a) < 0.2
    wrong = a.copy()
    wrong[:, 2] += [25.0, 0.0]
    assert agreement_over(query, mask, donor, wrong) < 0.2
    assert agreement_over(query, np.zeros((300, 400), bool), donor, a) == 0.0
    with pytest.raises(ValueError, match="not the size"):
        agreement_over(query, mask[:100], donor, a)


def test_edges_confirm_a_paste_where_a_shared_flat_colour_does_not():
    """An unrelated photo of the same colours agrees with a paste in colour where both are flat, never in edges;
    the paste's own source agrees in both. A flat mask has no edges to confirm."""
    donor = _texture(5)
    a = cv2.getRotationMatrix2D((200.0, 150.0), 10.0, 0.8)
    query = _texture(7)
    mask = np.zeros((300, 400), bool)
    mask[120:200, 150:260] = True
    query[mask] = cv2.warpAffine(donor, a, (400, 300))[mask]
    assert edge_agreement_over(query, mask, donor, a) > 0.9
    # independent edges agree by chance on about a fifth of the pixels (a cosine over 0.8 spans 74 of 360 degrees)
    assert edge_agreement_over(query, mask, _texture(6), a) < 0.25
    flat_query = np.full_like(query, 120)
    assert edge_agreement_over(flat_query, mask, np.full_like(donor, 120), a) == 0.0  # no edges: nothing confirmed
    # same colours, other edges: the query's paste blurred into a smooth wash of its own colours
    washed = cv2.GaussianBlur(donor, (0, 0), 12)
    assert edge_agreement_over(query, mask, washed, a) < 0.25
    with pytest.raises(ValueError, match="not the size"):
        edge_agreement_over(query, mask[:100], donor, a)
    for original in (donor, _texture(6), washed):  # both measures from one warp: the same numbers
        both = pixel_agreements(query, mask, original, a)
        assert both == (agreement_over(query, mask, original, a), edge_agreement_over(query, mask, original, a))
    assert pixel_agreements(query, np.zeros_like(mask), donor, a) == (0.0, 0.0)


def test_agreement_measured_around_the_mask_equals_the_whole_frames():
    """Colour agreement is computed only around the mask (for speed): the same as over the whole frame."""
    from oesir_cli.alignment import AGREE_BLUR, AGREE_LAB
    from oesir_cli.pixels import colour_difference

    donor, query = _texture(5), _texture(7)
    a = cv2.getRotationMatrix2D((200.0, 150.0), 10.0, 0.8)
    mask = np.zeros((300, 400), bool)
    mask[120:200, 150:260] = True
    query[100:170, 130:220] = cv2.warpAffine(donor, a, (400, 300))[100:170, 130:220]  # part of the mask agrees
    warped = cv2.warpAffine(donor, a, (400, 300), flags=cv2.INTER_LINEAR)
    inside = cv2.warpAffine(np.full(donor.shape[:2], 255, np.uint8), a, (400, 300), flags=cv2.INTER_NEAREST) > 0
    whole = ((colour_difference(query, warped, sigma=AGREE_BLUR) < AGREE_LAB) & inside)[mask].mean()
    assert 0.3 < whole < 0.7 and agreement_over(query, mask, donor, a) == pytest.approx(whole, abs=1e-9)
