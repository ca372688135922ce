"""Localization on synthetic pairs: host and donor relations, failure to align, output files."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from oesir_cli import api
from oesir_cli.cli import app
from oesir_cli.geometry import box_similarity, transform_points
from oesir_cli.localize import CONTRAST_THRESHOLDS, AlignmentError, PairFeatures, _align_keypoints, localize
from oesir_cli.pixels import clean_mask

from .conftest import EXAMPLES, synthetic_photo

runner = CliRunner()


def _make_pair(tmp_path: Path) -> tuple[Path, Path, Path, np.ndarray]:
    """Paste the cup of coffee.jpg into astronaut.jpg, then rescale 0.8, rotate 4 degrees, JPEG 75."""
    host = cv2.imread(str(EXAMPLES / "astronaut.jpg"))
    donor = cv2.imread(str(EXAMPLES / "coffee.jpg"))
    patch = cv2.resize(donor[20:250, 175:405], (170, 170))
    spliced = host.copy()
    spliced[300:470, 320:490] = patch
    truth = np.zeros(host.shape[:2], np.uint8)
    truth[300:470, 320:490] = 255
    h, w = host.shape[:2]
    m = cv2.getRotationMatrix2D((w / 2, h / 2), 4.0, 0.8)
    size = (int(w * 0.8), int(h * 0.8))
    m[:, 2] += (np.array(size) - np.array([w, h])) / 2
    query = cv2.warpAffine(spliced, m, size, borderMode=cv2.BORDER_REFLECT)
    truth = cv2.warpAffine(truth, m, size, flags=cv2.INTER_NEAREST)
    q = tmp_path / "query.jpg"
    cv2.imwrite(str(q), query, [cv2.IMWRITE_JPEG_QUALITY, 75])
    return q, EXAMPLES / "astronaut.jpg", EXAMPLES / "coffee.jpg", truth


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a > 0, b > 0
    return float((a & b).sum() / max((a | b).sum(), 1))


def test_host_relation_mask(tmp_path):
    q, host, _, truth = _make_pair(tmp_path)
    r = api.localize_paths(q, host)
    assert r.relation == "host"
    assert r.mask.shape == truth.shape
    assert _iou(r.mask, truth) >= 0.7
    # the paste's size: the blurred change map spills ~1 pixel out of the paste, which HOST_EDGE takes back
    ratio = (r.mask > 0).sum() / (truth > 0).sum()
    assert 0.95 <= ratio <= 1.045, ratio


def _mirrored_pair(tmp_path: Path) -> tuple[Path, np.ndarray]:
    """The cup of coffee.jpg, mirrored and shrunk to 60%, pasted into astronaut.jpg; saved as JPEG 80."""
    host = cv2.imread(str(EXAMPLES / "astronaut.jpg"))
    donor = cv2.imread(str(EXAMPLES / "coffee.jpg"))
    patch = cv2.resize(donor[20:250, 175:405][:, ::-1], (138, 138), interpolation=cv2.INTER_AREA)
    spliced = host.copy()
    spliced[280:418, 300:438] = patch
    truth = np.zeros(host.shape[:2], np.uint8)
    truth[280:418, 300:438] = 255
    q = tmp_path / "mirrored.jpg"
    cv2.imwrite(str(q), spliced, [cv2.IMWRITE_JPEG_QUALITY, 80])
    return q, truth


def test_mirrored_donor_aligns_and_marks_the_paste(tmp_path):
    q, truth = _mirrored_pair(tmp_path)
    r = api.localize_paths(q, EXAMPLES / "coffee.jpg")
    assert r.relation == "donor" and r.alignment.mirrored, r.as_dict()
    assert np.linalg.det(r.alignment.homography[:2, :2]) < 0  # the transform itself flips
    assert _iou(r.mask, truth) >= 0.6, _iou(r.mask, truth)


def test_mirrored_host_aligns(tmp_path):
    q, truth = _mirrored_pair(tmp_path)
    flipped = tmp_path / "flipped.jpg"  # the whole splice mirrored: the host is now a mirror image too
    cv2.imwrite(str(flipped), cv2.imread(str(q))[:, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 90])
    r = api.localize_paths(flipped, EXAMPLES / "astronaut.jpg")
    assert r.relation == "host" and r.alignment.mirrored
    assert _iou(r.mask, truth[:, ::-1]) >= 0.6, _iou(r.mask, truth[:, ::-1])


def test_donor_relation_mask(tmp_path):
    q, _, donor, truth = _make_pair(tmp_path)
    r = api.localize_paths(q, donor)
    assert r.relation == "donor"
    assert _iou(r.mask, truth) >= 0.7


def test_unrelated_pair_fails_with_clear_error(tmp_path):
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    cv2.imwrite(str(a), synthetic_photo(11))
    cv2.imwrite(str(b), synthetic_photo(12))
    from oesir_cli.imageio import load_rgb

    with pytest.raises(AlignmentError, match="could not align"):
        localize(load_rgb(a), load_rgb(b))
    out = tmp_path / "mask.png"
    r = runner.invoke(app, ["localize", str(a), str(b), "--out", str(out)])
    assert r.exit_code == 1
    assert "could not align" in r.stderr and "Traceback" not in r.output
    assert not out.exists(), "no garbage mask is written"


def test_outputs_written_only_when_asked_and_json(tmp_path):
    q, host, _, _ = _make_pair(tmp_path)
    outdir = tmp_path / "out"
    outdir.mkdir()
    r = runner.invoke(app, ["localize", str(q), str(host), "--json"])
    assert r.exit_code == 0, r.output
    assert list(outdir.iterdir()) == []
    info = json.loads(r.stdout)
    assert info["relation"] == "host" and info["inliers"] >= 12 and len(info["homography"]) == 3
    r = runner.invoke(
        app,
        [
            "localize",
            str(q),
            str(host),
            "--out",
            str(outdir / "m.png"),
            "--heatmap",
            str(outdir / "h.png"),
            "--overlay",
            str(outdir / "o.png"),
        ],
    )
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in outdir.iterdir()) == ["h.png", "m.png", "o.png"], "no temporary files left"
    m = cv2.imread(str(outdir / "m.png"), cv2.IMREAD_UNCHANGED)
    assert m.ndim == 2 and set(np.unique(m)) <= {0, 255}


def test_missing_output_folder_is_an_error(tmp_path):
    q, host, _, _ = _make_pair(tmp_path)
    r = runner.invoke(app, ["localize", str(q), str(host), "--out", str(tmp_path / "nope" / "m.png")])
    assert r.exit_code == 1 and "does not exist" in r.stderr


def test_box_similarity_maps_box_onto_box():
    h = box_similarity(np.array([10, 10, 50, 30]), np.array([100, 200, 180, 240]))
    pts = transform_points(h, np.array([[10, 10], [50, 30]], float))
    np.testing.assert_allclose(pts, [[100, 200], [180, 240]], atol=1e-6)


def test_clean_mask_drops_specks_and_fills_holes():
    m = np.zeros((100, 100), np.uint8)
    m[20:60, 20:60] = 1
    m[35:40, 35:40] = 0  # hole
    m[80, 80] = 1  # speck
    c = clean_mask(m)
    assert c[37, 37] == 255 and c[80, 80] == 0 and c[25, 25] == 255


def test_auto_localizes_against_searched_host_and_donor(tmp_path):
    from oesir_cli import api as oesir_api

    idx = tmp_path / "idx"
    oesir_api.index([EXAMPLES], index_dir=idx)
    spliced = EXAMPLES.parent / "spliced.jpg"
    r = runner.invoke(app, ["localize", str(spliced), "--auto", "--index", str(idx), "--json", "--out", str(tmp_path / "m.png")])
    assert r.exit_code == 0, r.output
    lines = [json.loads(line) for line in r.stdout.strip().splitlines()]
    assert [(Path(x["original"]).name, x["relation"]) for x in lines] == [("rocket.jpg", "host"), ("chelsea.jpg", "donor")]
    truth = cv2.imread(str(EXAMPLES.parent / "spliced_mask.png"), cv2.IMREAD_GRAYSCALE)
    assert [x["role"] for x in lines] == ["host", "donor"] and all(x["verified"] for x in lines)
    assert [Path(x["outputs"]["mask"]).name for x in lines] == ["m-host.png", "m-donor1.png"]
    for label in ("host", "donor1"):
        m = cv2.imread(str(tmp_path / f"m-{label}.png"), cv2.IMREAD_GRAYSCALE)
        assert _iou(m, truth) >= 0.7, label


def test_object_fallback_is_marked_unverified_and_fails_unless_allowed(tmp_path):
    """Two unrelated photos: the Eq. 8 object-pair alignment is a guess, never a finding."""
    q, o = EXAMPLES / "astronaut.jpg", EXAMPLES / "rocket.jpg"
    r = runner.invoke(app, ["localize", str(q), str(o), "--object-fallback", "--json"])
    assert r.exit_code == 1, r.output
    line = json.loads(r.stdout.strip().splitlines()[-1])
    assert line["alignment"] == "objects" and line["verified"] is False
    assert "UNVERIFIED" in r.stderr and "--allow-unverified" in r.stderr
    r = runner.invoke(app, ["localize", str(q), str(o), "--object-fallback", "--allow-unverified"])
    assert r.exit_code == 0 and "UNVERIFIED" in r.stdout
    r = runner.invoke(app, ["localize", str(q), str(o)])  # without the fallback: a plain refusal
    assert r.exit_code == 1 and "could not align" in r.output


def test_a_few_keypoints_confirmed_by_pixels_align_a_small_paste(tmp_path):
    """The cup shrunk to 56 px in astronaut.jpg: the fit from its handful of matches is taken because the
    donor's pixels, aligned by it, are the query's near the inliers; and it maps the cup onto the paste."""
    from oesir_cli.imageio import load_rgb
    from oesir_cli.localize import MIN_PIXEL_AGREEMENT, _align_confirmed_by_pixels

    host = cv2.imread(str(EXAMPLES / "astronaut.jpg"))
    donor = cv2.imread(str(EXAMPLES / "coffee.jpg"))
    spliced = host.copy()
    spliced[300:356, 320:376] = cv2.resize(donor[20:250, 175:405], (56, 56), interpolation=cv2.INTER_AREA)
    q = tmp_path / "small.jpg"
    cv2.imwrite(str(q), spliced, [cv2.IMWRITE_JPEG_QUALITY, 90])
    al = _align_confirmed_by_pixels(load_rgb(q), load_rgb(EXAMPLES / "coffee.jpg"))
    assert al is not None and al.method == "keypoints-pixels" and al.pixel_agreement >= MIN_PIXEL_AGREEMENT
    centre = transform_points(al.homography, np.array([[290.0, 135.0]]))[0]  # the cup's centre in coffee.jpg
    assert np.allclose(centre, [348, 328], atol=6), centre
    unrelated = cv2.cvtColor(synthetic_photo(12), cv2.COLOR_BGR2RGB)
    assert _align_confirmed_by_pixels(load_rgb(q), unrelated) is None


def _pasted_twice(tmp_path: Path) -> tuple[Path, np.ndarray, np.ndarray]:
    """The cup of coffee.jpg pasted into astronaut.jpg twice: shrunk to 170 px, and mirrored at 130 px."""
    host = cv2.imread(str(EXAMPLES / "astronaut.jpg"))
    cup = cv2.imread(str(EXAMPLES / "coffee.jpg"))[20:250, 175:405]
    spliced = host.copy()
    first, second = np.zeros(host.shape[:2], np.uint8), np.zeros(host.shape[:2], np.uint8)
    spliced[30:200, 300:470] = cv2.resize(cup, (170, 170), interpolation=cv2.INTER_AREA)
    first[30:200, 300:470] = 255
    spliced[340:470, 40:170] = cv2.resize(cup[:, ::-1], (130, 130), interpolation=cv2.INTER_AREA)
    second[340:470, 40:170] = 255
    q = tmp_path / "twice.jpg"
    cv2.imwrite(str(q), spliced, [cv2.IMWRITE_JPEG_QUALITY, 85])
    return q, first, second


def test_a_donor_pasted_twice_is_found_in_both_places(tmp_path):
    q, first, second = _pasted_twice(tmp_path)
    r = api.localize_paths(q, EXAMPLES / "coffee.jpg")
    assert r.relation == "donor" and len(r.further_placements) == 1, r.as_dict()
    assert {r.alignment.mirrored, r.further_placements[0].mirrored} == {False, True}
    assert _iou(r.mask, first | second) >= 0.75, _iou(r.mask, first | second)
    # each placement owns its own paste: the report pulls each back through its own transform
    big, small = (1, 2) if not r.alignment.mirrored else (2, 1)
    assert (r.placement[first > 0] == big).mean() >= 0.9 and (r.placement[second > 0] == small).mean() >= 0.9
    assert set(np.unique(r.placement[r.mask == 0])) == {0}
    record = r.as_dict()
    assert len(record["further_placements"]) == 1 and record["further_placements"][0]["alignment"] == "keypoints-pixels"
    cup_centre = transform_points(r.further_placements[0].homography, np.array([[290.0, 135.0]]))[0]
    expected = (105, 405) if r.further_placements[0].mirrored else (385, 115)
    assert np.allclose(cup_centre, expected, atol=8), cup_centre


def test_a_single_paste_has_no_further_placements_and_its_full_size(tmp_path, monkeypatch):
    """A donor pasted once: no chance placements elsewhere; and the mask is the paste's size (a paste's mixed
    border and the blurred change map would otherwise shave pixels off every side)."""
    import oesir_cli.localize as loc

    q, first, _ = _pasted_twice(tmp_path)
    once = cv2.imread(str(EXAMPLES / "astronaut.jpg"))
    once[first > 0] = cv2.imread(str(q))[first > 0]
    path = tmp_path / "once.png"
    cv2.imwrite(str(path), once)
    r = api.localize_paths(path, EXAMPLES / "coffee.jpg")
    assert r.relation == "donor" and r.further_placements == []
    ratio = (r.mask > 0).sum() / (first > 0).sum()
    assert 0.92 <= ratio <= 1.12 and _iou(r.mask, first) >= 0.85, (ratio, _iou(r.mask, first))
    monkeypatch.setattr(loc, "DONOR_EDGE", 0)
    shaved = api.localize_paths(path, EXAMPLES / "coffee.jpg")
    assert (shaved.mask > 0).sum() < (r.mask > 0).sum()


@pytest.mark.parametrize("mirrored", [False, True])
def test_a_shrunk_paste_aligns_on_the_reduced_original(tmp_path, mirrored):
    """Keypoints of the original reduced to 1/2 and 1/3 (a paste shrunk several times) give a transform of the
    original itself: it maps the cup's centre onto the paste, mirrored or not."""
    from oesir_cli.imageio import load_rgb
    from oesir_cli.localize import SHRUNK_ORIGINAL_SCALES, _align_confirmed_by_pixels

    host = cv2.imread(str(EXAMPLES / "astronaut.jpg"))
    cup = cv2.imread(str(EXAMPLES / "coffee.jpg"))[20:250, 175:405]
    spliced = host.copy()
    spliced[300:372, 320:392] = cv2.resize(cup[:, ::-1] if mirrored else cup, (72, 72), interpolation=cv2.INTER_AREA)
    q = tmp_path / "shrunk.jpg"
    cv2.imwrite(str(q), spliced, [cv2.IMWRITE_JPEG_QUALITY, 90])
    al = _align_confirmed_by_pixels(load_rgb(q), load_rgb(EXAMPLES / "coffee.jpg"), scales=SHRUNK_ORIGINAL_SCALES)
    assert al is not None and al.original_scale < 1 and al.mirrored == mirrored, al
    centre = transform_points(al.homography, np.array([[290.0, 135.0]]))[0]
    assert np.allclose(centre, [356, 336], atol=5), centre
    corner = transform_points(al.homography, np.array([[175.0, 20.0]]))[0]  # the crop's top left lands top left
    assert np.allclose(corner, [392, 300] if mirrored else [320, 300], atol=6), corner


class _GivenMatches(PairFeatures):
    """A pair's features whose keypoint matches are given: `src` (original) -> `dst` (query), none mirrored."""

    def __init__(self, query: np.ndarray, original: np.ndarray, src: np.ndarray, dst: np.ndarray) -> None:
        super().__init__(query, original)
        self.given = src, dst

    def matches(self, query, contrast, mirrored, scale=1.0):
        src, dst = self.given if not mirrored else (np.zeros((0, 2)), np.zeros((0, 2)))
        return src, dst, len(src)


def test_a_similarity_fit_counts_only_where_the_pixels_near_its_inliers_agree():
    """Eight matches that agree on one shift: taken when the original is the query shifted, refused when the
    original is another photo (six chance matches agreeing on a similarity is what aligned unrelated pairs)."""
    from oesir_cli.imageio import load_rgb

    query = load_rgb(EXAMPLES / "astronaut.jpg")
    src = np.random.default_rng(0).uniform([40, 40], [400, 400], size=(8, 2))
    dst = src + [20.0, 10.0]
    shifted = np.ascontiguousarray(query[10:, 20:])  # its (x, y) is the query's (x + 20, y + 10)
    found = _align_keypoints(_GivenMatches(query, shifted, src, dst), CONTRAST_THRESHOLDS[0])
    assert found is not None and found.method == "keypoints-similarity" and found.inliers == 8
    assert found.pixel_agreement >= 0.9 and np.allclose(found.homography[:2, 2], [20, 10], atol=0.5)
    other = load_rgb(EXAMPLES / "coffee.jpg")[: shifted.shape[0], : shifted.shape[1]]
    assert _align_keypoints(_GivenMatches(query, other, src, dst), CONTRAST_THRESHOLDS[0]) is None
