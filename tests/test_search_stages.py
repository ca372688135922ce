"""Each stage of search on small synthetic arrays: fusion order, the vote gate, host choice, votes, the region."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from oesir_cli.choices import Role, Verdict
from oesir_cli.imageio import load_rgb
from oesir_cli.local_index import Neighbours
from oesir_cli.search import DEFAULT_PARAMS, DonorEvidence, Votes, fused_ranking, object_ranking, vote_ranking
from oesir_cli.search.fusion import Ranking, reciprocal_ranks, with_first
from oesir_cli.search.host import HostCandidates, choose_host, host_candidates
from oesir_cli.search.region import Region, changed_blob, changed_blobs, changed_region, merge_regions, region_keypoints
from oesir_cli.search.verdict import HostFinding, is_verified_host, roles_and_verdict

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "photos"
P = DEFAULT_PARAMS


def _donors(**kw) -> DonorEvidence:
    n = 6
    base = dict(
        host=0,
        residual_votes=np.zeros(n),
        votes=np.zeros(n),
        object_distance=np.linspace(0.5, 1.5, n),
        region_distance=None,
    )
    return DonorEvidence(**{**base, **kw})


def test_host_is_first_whatever_its_other_evidence():
    ev = _donors(host=5, residual_votes=np.array([9, 8, 7, 0, 0, 30.0]), object_distance=np.array([0.1, 0.2, 0.3, 0.4, 0.5, 3.9]))
    r = fused_ranking(ev, P)
    assert r.order[0] == 5 and r.score[5] == r.score.max()


def test_vote_gate_puts_region_votes_before_any_embedding_evidence():
    # photo 4 has the best Eq. 7 distances but only 3 residual votes; photos 2 and 3 pass the gate
    ev = _donors(
        residual_votes=np.array([50, 0, P.vote_gate, P.vote_gate + 3, P.vote_gate - 1, 0.0]),
        object_distance=np.array([0.0, 1.0, 1.9, 1.8, 0.1, 0.2]),
        region_distance=np.array([0.0, 1.0, 1.9, 1.8, 0.1, 0.2]),
    )
    order = fused_ranking(ev, P).order.tolist()
    assert order[:3] == [0, 3, 2], order  # host, then gated photos by residual votes
    assert order[3] == 4  # then RRF: best distances and the most residual votes left


def test_retuning_rrf_cannot_reorder_gated_photos():
    ev = _donors(residual_votes=np.array([0, 5, 6, 0, 0, 0.0]), object_distance=np.array([0.0, 0.1, 1.9, 0.2, 0.3, 0.4]))
    for k in (0.1, 1.0, 10.0, 100.0):
        for w in (0.1, 1.0, 10.0):
            order = fused_ranking(_donors(**{**ev.__dict__}), replace(P, rrf_k=k, object_weight=w)).order.tolist()
            assert order[:3] == [0, 2, 1], (k, w, order)


def test_display_score_follows_the_order():
    rng = np.random.default_rng(0)
    for _ in range(20):
        ev = _donors(
            host=int(rng.integers(6)),
            residual_votes=rng.integers(0, 9, 6).astype(float),
            votes=rng.integers(0, 30, 6).astype(float),
            object_distance=rng.random(6) * 2,
            region_distance=rng.random(6) * 2,
        )
        r = fused_ranking(ev, P)
        assert np.all(np.diff(r.score[r.order]) <= 0)


def test_unreached_photos_earn_no_rrf_credit():
    assert reciprocal_ranks(np.array([0.5, np.inf, 0.2]), 10.0).tolist() == [1 / 11, 0.0, 1 / 10]
    ev = _donors(object_distance=np.array([0.1, np.inf, 0.3, 0.4, 0.5, 0.6]))
    assert fused_ranking(ev, P).order.tolist()[-1] == 1


def test_ties_keep_the_lower_photo_number_first():
    ev = _donors(object_distance=np.full(6, 1.0))
    assert fused_ranking(ev, P).order.tolist() == [0, 1, 2, 3, 4, 5]


def test_with_first_moves_photos_after_the_host_keeping_their_order_and_scores_monotone():
    ev = _donors(residual_votes=np.array([0, 6, 5, 0, 0, 0.0]), object_distance=np.array([0.0, 1.0, 1.1, 0.2, 0.3, 0.4]))
    r = fused_ranking(ev, P)
    assert r.order.tolist() == [0, 1, 2, 3, 4, 5]
    moved = with_first(r, [5, 3], keep=1)
    assert moved.order.tolist() == [0, 3, 5, 1, 2, 4]  # in their order in the ranking, not as given
    assert np.all(np.diff(moved.score[moved.order]) <= 0)
    assert moved.score[0] == r.score[0] and moved.score[1] == r.score[1]  # the host and the rest keep their scores
    assert with_first(r, [], keep=1).order.tolist() == r.order.tolist()
    assert with_first(r, [4], keep=0).order.tolist() == [4, 0, 1, 2, 3, 5]
    for bad, keep in (([0], 1), ([9], 1), ([1], 7)):
        try:
            with_first(r, bad, keep)
        except ValueError:
            continue
        raise AssertionError((bad, keep))
    flat = Ranking(np.array([2, 1, 0]), np.array([0.1, 0.5, 0.9]))
    assert with_first(flat, [0], keep=1).score[0] == 0.5  # as much as photo 1, which it now precedes


def test_object_and_vote_rankings():
    d = np.array([0.9, np.inf, 0.1, 0.5], np.float32)
    assert object_ranking(d).order.tolist() == [2, 3, 0]  # unreached left out
    votes = np.array([3, 3, 7, 0.0])
    assert vote_ranking(votes, d).order.tolist() == [2, 0, 1, 3]  # tie at 3 votes: reached before unreached


def test_votes_ratio_test_and_one_vote_per_keypoint_per_photo():
    # what the query's keypoints found in the lists they probed, in no particular order (as `LocalIndex.probe` returns it)
    found = Neighbours(
        q=np.array([0, 0, 0, 0, 1, 1, 1, 2, 2]),
        photo=np.array([0, 0, 1, 2, 1, 1, 2, 2, 0]),
        dist=np.array([1.2, 1.0, 5.0, 8.0, 6.0, 1.0, 9.0, 8.0, 9.0], np.float32),
        xy=np.array([[12, 0], [10, 0], [50, 0], [80, 0], [60, 1], [10, 1], [90, 1], [80, 2], [90, 2]], np.float64),
        kth=np.array([10.0, 10.0, 12.0], np.float32),
    )
    v = Votes.from_neighbours(found, 3, ratio=0.7)
    # keypoint 0 (k-th 10: under 7 votes): photo 0 twice (counted once) and photo 1; its 8.0 for photo 2 is too far.
    # keypoint 1: photo 1 twice, once. keypoint 2 (its own k-th 12: under 8.4 votes): photo 2 at 8.0.
    assert v.counts.tolist() == [1, 2, 1]
    pairs = sorted(zip(v.q_idx.tolist(), v.photos.tolist(), v.db_xy.tolist()))
    # each (keypoint, photo) vote keeps its nearest stored keypoint's position
    assert pairs == [(0, 0, [10, 0]), (0, 1, [50, 0]), (1, 1, [10, 1]), (2, 2, [80, 2])]
    assert v.neighbours is found  # kept for the host stage's matches
    none = Votes.from_neighbours(found, 3, ratio=0.1)
    assert none.counts.tolist() == [0, 0, 0] and len(none.q_idx) == len(none.db_xy) == 0


def test_residual_counts_drop_keypoints_the_host_explains():
    v = Votes(
        q_idx=np.array([0, 0, 1, 2, 3]), db_xy=np.zeros((5, 2)), photos=np.array([0, 1, 1, 1, 2]), counts=np.array([1, 3, 1])
    )
    assert v.residual_counts(host=0).tolist() == [0, 2, 1]  # keypoint 0 voted for the host: its vote for 1 goes
    assert v.residual_counts(host=1).tolist() == [0, 0, 1]


def test_host_candidates_and_choice():
    counts = np.array([0, 30, 2, 25, 0.0])
    whole = np.array([0.3, 0.9, np.inf, 0.8, 0.2])
    c = host_candidates(counts, whole, P)
    assert c.by_votes == [1, 3, 2] and c.by_image == [4, 0] and c.all == [1, 3, 2, 4, 0]
    score = {1: 0.50, 3: 0.54, 2: 0.0, 4: 0.3, 0: 0.1}
    assert choose_host(c, score, counts, P) == 1  # 0.54 is within the margin of the leader's 0.50
    assert choose_host(c, {**score, 3: 0.56}, counts, P) == 3
    flat = dict.fromkeys(score, 0.01)  # nothing aligns: the nearest whole image
    assert choose_host(c, flat, counts, P) == 4
    assert choose_host(HostCandidates([], []), {2: 0.0}, np.array([0, 0, 1.0]), P) == 2


def test_changed_region_box_and_refusals():
    changed = np.zeros((200, 300), np.uint8)
    assert changed_region(None, P) is None and changed_region(changed, P) is None
    changed[50:90, 100:160] = 255
    changed[5:7, 5:7] = 255  # speck: cleaned away
    assert changed_region(changed, P).tolist() == [100, 50, 160, 90]
    changed[:, :200] = 255  # over half the photo: the host was not aligned
    assert changed_region(changed, P) is None


def test_changed_blob_is_the_largest_blob():
    changed = np.zeros((200, 300), np.uint8)
    changed[50:90, 100:160] = 255
    changed[150:170, 20:40] = 255  # a smaller second blob
    blob = changed_blob(changed, P)
    assert blob.dtype == bool and abs(int(blob.sum()) - 40 * 60) <= 8 and blob[60, 120] and not blob[160, 30]


def test_region_keypoints_come_from_the_blob_only():
    """With the changed pixels given, no region keypoint lies on the host around them."""
    rgb = load_rgb(EXAMPLES / "astronaut.jpg")
    box = np.array([100, 100, 300, 260], np.float32)
    blob = np.zeros(rgb.shape[:2], bool)
    blob[140:220, 150:250] = True  # inside the box, leaving a host margin within it
    everywhere, width = region_keypoints(rgb, box, None, P)
    only_blob, width_blob = region_keypoints(rgb, box, blob, P)
    assert width == width_blob and len(only_blob) > 20 and len(everywhere) > len(only_blob)
    # crop coordinates -> query pixels: the crop starts REGION_MARGIN x the box size before the box
    scale = width / (1.2 * 200)
    x = only_blob.keypoints[:, 0] / scale + 100 - 20
    y = only_blob.keypoints[:, 1] / scale + 100 - 16
    grow = P.region_blob_grow * 200 + 2
    assert (x > 150 - grow).all() and (x < 250 + grow).all() and (y > 140 - grow).all() and (y < 220 + grow).all()


def _host(**kw) -> HostFinding:
    base = dict(photo=0, aligned=True, explained_share=0.8, frame_share=0.95, whole_distance=0.2, changed_region=True)
    return HostFinding(**{**base, **kw})


def test_roles_host_verified_donors_by_consistent_votes():
    support = np.array([0, P.donor_min_consistent_votes, P.donor_min_consistent_votes - 1, 40, 0])
    roles, verdict = roles_and_verdict(np.array([0, 3, 1, 2, 4]), _host(), support, P)
    assert [r.value for r in roles] == ["host", "donor", "donor", "candidate", "candidate"] and verdict is Verdict.SOURCES


def test_a_weakly_supported_donor_is_labelled_when_its_pixels_confirm_the_change():
    few = P.donor_pixel_check_votes
    support = np.array([0, few, few, few])
    agree = np.array([False, True, False, False])
    roles, verdict = roles_and_verdict(np.array([0, 1, 2, 3]), _host(), support, P, agree)
    assert [r.value for r in roles] == ["host", "donor", "candidate", "candidate"] and verdict is Verdict.SOURCES
    weak = _host(aligned=False, explained_share=0.0, frame_share=0.0, whole_distance=P.host_verified_whole_distance + 0.3)
    roles, verdict = roles_and_verdict(np.array([0, 1, 2, 3]), weak, support, P, agree)
    assert Role.DONOR not in roles and verdict is Verdict.NONE  # no verified host: pixels alone label nothing


def test_unverified_host_is_a_candidate_and_lone_chance_votes_give_no_source():
    weak = _host(aligned=False, explained_share=0.0, frame_share=0.0, whole_distance=P.host_verified_whole_distance + 0.3)
    support = np.array([0, P.donor_min_consistent_votes, 0])  # enough with a host, not without one
    roles, verdict = roles_and_verdict(np.array([0, 1, 2]), weak, support, P)
    assert [r.value for r in roles] == ["candidate"] * 3 and verdict is Verdict.NONE
    support[1] = P.donor_min_consistent_votes_without_host  # a composite of copies: donors, no host
    roles, verdict = roles_and_verdict(np.array([0, 1, 2]), weak, support, P)
    assert [r.value for r in roles] == ["candidate", "donor", "candidate"] and verdict is Verdict.SOURCES


def test_host_verified_by_its_whole_image_when_nothing_aligns():
    flat = _host(aligned=False, explained_share=0.0, frame_share=0.0, whole_distance=P.host_verified_whole_distance - 0.1)
    assert is_verified_host(flat, P)
    assert not is_verified_host(_host(explained_share=0.1, frame_share=0.2, whole_distance=1.0), P)  # explains too little


def test_copy_verdict_needs_a_verified_host_explaining_all_with_no_change():
    same = _host(explained_share=0.99, frame_share=1.0, changed_region=False)
    assert roles_and_verdict(np.array([0, 1]), same, np.zeros(2), P)[1] is Verdict.COPY
    assert (
        roles_and_verdict(np.array([0, 1]), _host(explained_share=0.99, changed_region=True), np.zeros(2), P)[1]
        is Verdict.SOURCES
    )
    donor = np.array([0, 30])
    assert roles_and_verdict(np.array([0, 1]), same, donor, P)[1] is Verdict.SOURCES  # a donor means a change


def test_changed_blobs_largest_first_then_large_enough_others():
    changed = np.zeros((200, 300), np.uint8)
    changed[20:80, 20:100] = 255  # 4,800 px: the largest
    changed[120:170, 150:230] = 255  # 4,000 px: a second paste
    changed[150:160, 20:30] = 255  # 100 px: kept by the region cleaner, too small for a region of its own
    blobs = changed_blobs(changed, P)
    assert len(blobs) == 2 and blobs[0][50, 50] and blobs[1][140, 200]
    assert (
        changed_blobs(changed, replace(P, max_regions=1))[0][50, 50]
        and len(changed_blobs(changed, replace(P, max_regions=1))) == 1
    )
    assert changed_blobs(None, P) == []


def test_merge_regions_takes_the_closest_region_per_photo_and_sums_votes():
    a = Region(np.array([0, 0, 10, 10.0]), np.array([0.5, 1.5, 1.0]), np.array([1, 2, 3]), np.array([5.0, 0, 1]))
    b = Region(np.array([50, 50, 60, 60.0]), np.array([1.2, 0.4, 1.0]), np.array([7, 8, 9]), np.array([0.0, 9, 1]))
    assert merge_regions([a]) is a
    m = merge_regions([a, b])
    assert m.distance.tolist() == [0.5, 0.4, 1.0] and m.row_of.tolist() == [1, 8, 3] and m.votes.tolist() == [5, 9, 2]
    assert m.box_of.tolist() == [[0, 0, 10, 10], [50, 50, 60, 60], [0, 0, 10, 10]]


def test_rematch_confirms_a_paste_shrunk_several_times_on_the_reduced_photo(monkeypatch):
    """The cup of coffee.jpg shrunk ~4x (56 px) into astronaut.jpg: by Lowe's ratio test the photo's own keypoints
    as it is give no fit its pixels confirm; taken on it reduced (SHRUNK_ORIGINAL_SCALES), they do; and so do the
    matches of the looser ratio test on the photo as it is."""
    from types import SimpleNamespace

    import cv2

    import oesir_cli.search.searcher as searcher
    from oesir_cli.alignment import RATIO
    from oesir_cli.keypoints import extract

    query = load_rgb(EXAMPLES / "astronaut.jpg")
    cup = load_rgb(EXAMPLES / "coffee.jpg")[20:250, 175:405]
    query[300:356, 320:376] = cv2.resize(cup, (56, 56), interpolation=cv2.INTER_AREA)
    ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(query, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 90])
    query = cv2.cvtColor(cv2.imdecode(jpeg, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    changed = np.zeros(query.shape[:2], bool)
    changed[300:356, 320:376] = True
    view, blob = query[280:396, 300:416].copy(), changed[280:396, 300:416]
    s = searcher.Searcher.__new__(searcher.Searcher)  # only the parts the rematch reads
    s.params = replace(DEFAULT_PARAMS, rematch_loose_ratio=RATIO)  # Lowe's ratio test alone
    s.photos = SimpleNamespace(catalogue=SimpleNamespace(paths=[str(EXAMPLES / "coffee.jpg")]))
    views = [(extract(view), (view, blob))]
    assert s._rematched_agreement(0, views)[2]
    monkeypatch.setattr(searcher, "SHRUNK_ORIGINAL_SCALES", ())
    as_it_is = s._rematched_agreement(0, views)
    assert not as_it_is[2], as_it_is
    s.params = DEFAULT_PARAMS  # the looser ratio test's matches (edges checked harder) fit it as it is
    assert s._rematched_agreement(0, views)[2]


def _cup_in_astronaut(side: int, at: tuple[int, int]) -> np.ndarray:
    """astronaut.jpg with coffee.jpg's cup pasted at `at` (x, y), `side` pixels square, re-encoded."""
    import cv2

    query = load_rgb(EXAMPLES / "astronaut.jpg")
    cup = load_rgb(EXAMPLES / "coffee.jpg")[20:250, 175:405]
    x, y = at
    query[y : y + side, x : x + side] = cv2.resize(cup, (side, side), interpolation=cv2.INTER_AREA)
    ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(query, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 90])
    return cv2.cvtColor(cv2.imdecode(jpeg, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def _rematcher(path: Path):
    from types import SimpleNamespace

    import oesir_cli.search.searcher as searcher

    s = searcher.Searcher.__new__(searcher.Searcher)  # only the parts the rematch reads
    s.params = DEFAULT_PARAMS
    s.photos = SimpleNamespace(catalogue=SimpleNamespace(paths=[str(path)]))
    return s


def test_rematch_counts_the_pixels_near_its_fit_within_the_change():
    """The whole query's keypoints fit the cup's photo: its pixels confirm the change near the fit's inliers
    even when the changed blob also holds a large part the photo has nothing to do with (another paste), and
    a fit whose inliers lie outside the changed pixels confirms nothing."""
    from oesir_cli.alignment import SEARCH_FIT, agreement_over, fit_similarity, ratio_matches
    from oesir_cli.keypoints import extract

    query = _cup_in_astronaut(120, (300, 280))
    features = extract(query)
    cup = np.zeros(query.shape[:2], bool)
    cup[280:400, 300:420] = True
    other = np.zeros_like(cup)
    other[20:260, 20:260] = True  # 4x the cup's area, changed by something else
    s = _rematcher(EXAMPLES / "coffee.jpg")
    need = DEFAULT_PARAMS.donor_min_pixel_agreement
    colour, edges, confirmed = s._rematched_agreement(0, [(features, (query, cup | other))])
    assert confirmed and colour >= need and edges >= DEFAULT_PARAMS.rematch_min_edge_agreement, (colour, edges)
    original = load_rgb(EXAMPLES / "coffee.jpg")
    stored = extract(original)
    pairs = ratio_matches(features.descriptors.astype(np.float32), stored.descriptors.astype(np.float32))
    a, _ = fit_similarity(stored.keypoints[pairs[:, 1], :2], features.keypoints[pairs[:, 0], :2], SEARCH_FIT)
    assert agreement_over(query, cup, original, a) >= need  # the same fit, over the cup alone ...
    assert agreement_over(query, cup | other, original, a) < need  # ... and diluted over the whole blob
    elsewhere = s._rematched_agreement(0, [(features, (query, other))])
    assert not elsewhere[2], elsewhere


def test_the_whole_querys_keypoints_in_the_change_that_find_the_host_again_make_a_copy_move():
    """A copy-move: query keypoints inside the changed pixels vote for the host at the place they were copied
    from, all by one shift; the same votes from keypoints outside the change (the host where it is unchanged)
    say nothing of the change."""
    from oesir_cli.keypoints import LocalFeatures
    from oesir_cli.search.region import Region, moved_from_host

    rng = np.random.default_rng(3)
    inside = rng.uniform([200, 200], [260, 260], size=(8, 2))  # in the changed square
    outside = rng.uniform([20, 20], [120, 120], size=(8, 2))
    changed = np.zeros((300, 300), bool)
    changed[190:270, 190:270] = True
    region = Region(np.array([190, 190, 270, 270]), np.zeros(2), np.zeros(2, np.int64), np.zeros(2))

    def copied(points: np.ndarray) -> tuple[LocalFeatures, Votes, np.ndarray]:
        features = LocalFeatures(np.hstack([points, np.ones((len(points), 2))]).astype(np.float32), np.zeros((8, 128), np.uint8))
        votes = Votes(np.arange(8), points - [150.0, 100.0], np.zeros(8, np.int64), np.array([8, 0]))
        return features, votes, changed

    assert moved_from_host(None, region, 0, P, [copied(inside)])
    assert not moved_from_host(None, region, 0, P, [copied(outside)])
    assert not moved_from_host(None, region, 0, P)
