"""`oesir search`: rank indexed photos as possible sources of a query photo.

Two kinds of evidence, each computed exactly over the whole index:

* objects (the paper's Eq. 7): D(q, d) = min over object pairs of the squared
  L2 distance between whitened object embeddings. hnswlib proposes the
  candidate photos; their distances are then recomputed exactly, so the ranking
  equals brute force over the stored embeddings.
* local features: every RootSIFT descriptor of the query (and of its mirror
  image when no host is found as it is), votes for the photos of its nearest
  stored descriptors; a photo's score is the number of query keypoints that
  voted for it.

The default ranking ("fused") puts the host first (of the best candidates,
the photo that explains most of the query's pixels once aligned), then queries
the region the host does not explain (the likely pasted object) on its own,
and ranks donors by reciprocal-rank fusion of keypoint votes, Eq. 7 over the
query's objects and Eq. 7 of the region. `mode="objects"` is the paper's
method alone.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import cv2
import numpy as np

from . import ivf
from .ann import Graph, cached_graph
from .engine import REGION_MARGIN, Engine, crop_region
from .imageio import ImageError, load_rgb
from .local import LocalFeatures, extract, mirrored, spread
from .localize import clean_mask, colour_difference
from .store import Catalogue, Store, writer_lock
from .errors import StoreError

MODES = ("fused", "objects", "local")
_POOL = ThreadPoolExecutor(max_workers=1)
VOTE_K = 5  # neighbours per query keypoint
VOTE_EF = 32  # hnswlib search breadth (48 gave the same top 10 on 80 dev queries, 25% slower)
VOTE_RATIO = 0.7  # a neighbour votes if its distance < ratio x the k-th neighbour's (a ratio test)
QUERY_KEYPOINTS = 1000
MIRROR_FALLBACK_VOTES = 20  # the whole query's mirror image votes only if no photo gets this many votes as is
HOST_CANDIDATES_VOTES = 3  # host candidates: the vote leaders ...
HOST_CANDIDATES_IMAGE = 2  # ... and the nearest whole-image embeddings
HOST_MARGIN = 0.05
HOST_FRAME = 0.1
HOST_MIN_SCORE = 0.05  # below this (nothing aligns), the nearest whole image is the host
RRF_K = 10.0
OBJECT_WEIGHT = 1.0
REGION_WEIGHT = 1.0
VOTE_GATE = 4  # this many pasted-region keypoints voting for a photo outweigh embedding evidence
REGION_CLEAR_VOTES = 8  # the region's mirror image is searched unless a photo (not the host) gets this many as is
REGION_MIN_SHARE = 0.002  # changed blobs smaller than this share of the query are noise
REGION_MAX_SHARE = 0.5  # a "changed" area larger than this means the host was not aligned
REGION_KEYPOINT_SIDE = 256  # the region (with its margin) is resized to this longer side for its own keypoints ...
REGION_KEYPOINTS = 500  # ... up to this many
REGION_BLOB_GROW = 0.05  # region keypoints: within the changed pixels grown by this share of the region's size
EXACT_OBJECTS_MAX = 200_000
OBJECT_FILES = ("objects.hnsw", "objects.hnsw.json", "objects.ivfpq", "objects.ivfpq.json")
OBJECT_GRAPH = {"m": 16, "ef_construction": 200}
LOCAL_GRAPH = {"m": 16, "ef_construction": 64}  # ~1M descriptors per 1,000 photos: build cost matters


@dataclass(frozen=True)
class Match:
    """One ranked database photo."""

    image: str
    score: float  # fused score, higher is better
    distance: float  # Eq. 7 distance (lower is closer)
    votes: int  # query keypoints voting for this photo
    query_box: list[float]
    db_box: list[float]

    def as_dict(self) -> dict:
        return {
            "image": self.image,
            "distance": round(float(self.distance), 6) if np.isfinite(self.distance) else None,  # None: not reached
            "score": round(float(self.score), 6),
            "votes": int(self.votes),
            "query_box": [round(float(v), 1) for v in self.query_box],
            "db_box": [round(float(v), 1) for v in self.db_box],
        }


def graph_stamp(store: Store, cat: Catalogue, kind: str) -> dict:
    stamp = {"generation": cat.generation, "model_version": store.meta("model_version"), "kind": kind}
    return {**stamp, "codec": cat.codec.name} if kind == "objects" else stamp


def needed_graphs(store: Store, cat: Catalogue) -> dict[str, dict]:
    """Graph file -> the stamp it must carry, for the graphs search uses on `cat`.

    The object graph is only needed above EXACT_OBJECTS_MAX objects; below,
    search scores every photo exactly.
    """
    out = {"local.hnsw": graph_stamp(store, cat, "local")}
    if len(cat.codes) > EXACT_OBJECTS_MAX:
        out[_object_structure(cat)] = graph_stamp(store, cat, "objects")
    return out


def _object_structure(cat: Catalogue) -> str:
    """pq codes are searched by faiss IVF-PQ (when installed); other codecs by an hnswlib graph."""
    return "objects.ivfpq" if cat.codec.name == "pq" and ivf.available() else "objects.hnsw"


def load_graphs(store: Store, cat: Catalogue, writable: bool) -> tuple[Graph | ivf.IVFPQ | None, Graph]:
    """The object and local-feature graphs for `cat`: loaded if current, else built (and saved when `writable`).

    The object graph is None when not needed (a leftover file is removed when `writable`).
    """
    stamps = needed_graphs(store, cat)
    objects: Graph | ivf.IVFPQ | None = None
    if "objects.ivfpq" in stamps:
        objects = ivf.cached_ivfpq(store.dir / "objects.ivfpq", stamps["objects.ivfpq"], cat.codec, cat.codes, writable)
    elif "objects.hnsw" in stamps:
        objects = cached_graph(
            store.dir / "objects.hnsw",
            lambda: cat.embeddings,
            stamps["objects.hnsw"],
            writable,
            shape=(len(cat.codes), cat.codec.dim),
            **OBJECT_GRAPH,
        )
    if writable:
        for name in set(OBJECT_FILES) - {n for s in stamps for n in (s, s + ".json")}:
            (store.dir / name).unlink(missing_ok=True)
    local = cached_graph(
        store.dir / "local.hnsw",
        lambda: _desc_float(cat.descriptors),
        stamps["local.hnsw"],
        writable,
        shape=(len(cat.descriptors), cat.descriptors.shape[1]),
        **LOCAL_GRAPH,
    )
    return objects, local


def refresh_graphs(store: Store) -> None:
    """Rebuild the derived graphs if they are missing or stale (the caller holds the writer lock)."""
    load_graphs(store, store.load_all(), writable=True)


def _desc_float(desc: np.ndarray) -> np.ndarray:
    return desc.astype(np.float32) * (1.0 / 255.0)


class Searcher:
    """An open index plus the engine; search one query photo at a time."""

    def __init__(self, store: Store, engine: Engine):
        self.store = store
        self.engine = engine
        self.cat: Catalogue = store.load_all()
        self.objects, self.local = _graphs_as_reader(store, self.cat)
        self.n_photos = len(self.cat.paths)
        self.whole_rows = np.flatnonzero(self.cat.object_index == 0)
        self.photo_rows = np.searchsorted(self.cat.object_image, np.arange(self.n_photos + 1))  # photo p: rows [p], [p+1]

    # -- evidence ---------------------------------------------------------
    def object_distances(self, query_emb: np.ndarray, top: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Eq. 7 for every photo reached: (distance [P], query object [P], db object row [P]); inf if not reached.

        Up to EXACT_OBJECTS_MAX stored objects every photo is scored exactly;
        above, hnswlib proposes, for each query object, its nearest stored
        objects, and every photo owning one of them is scored exactly over all
        its objects.
        """
        dist = np.full(self.n_photos, np.inf, np.float32)
        q_of = np.zeros(self.n_photos, np.int64)
        row_of = np.zeros(self.n_photos, np.int64)
        n = len(self.cat.codes)
        if n == 0:
            return dist, q_of, row_of
        if self.objects is None:  # small index: every photo, exactly, is cheaper
            cand_rows = np.arange(n)
        else:
            k = min(n, max(64, 8 * top))
            rows, _ = self.objects.knn(query_emb, k, ef=2 * k)
            rows = rows[rows >= 0]
            photos = np.unique(self.cat.object_image[rows])
            cand_rows = np.concatenate([np.arange(self.photo_rows[p], self.photo_rows[p + 1]) for p in photos])
        d = self.cat.codec.distances(query_emb, self.cat.codes[cand_rows])  # [Q, R], exact w.r.t. the stored codes
        best_q = d.argmin(0)
        best_d = d[best_q, np.arange(len(cand_rows))]
        owners = self.cat.object_image[cand_rows]
        order = np.lexsort((best_d, owners))  # per owner, smallest first
        first = np.r_[True, owners[order][1:] != owners[order][:-1]]
        sel = order[first]
        dist[owners[sel]] = best_d[sel]
        q_of[owners[sel]] = best_q[sel]
        row_of[owners[sel]] = cand_rows[sel]
        return dist, q_of, row_of

    def local_votes(self, feats: list[LocalFeatures], k: int = VOTE_K) -> list[Votes]:
        """Votes of the query's keypoints (one set per orientation: as is, mirrored)."""
        out = []
        if self.local.count == 0:
            return out
        for f in feats:
            if len(f) == 0:
                continue
            rows, dists = self.local.knn(_desc_float(f.descriptors), k, ef=VOTE_EF)
            out.append(Votes.from_knn(rows, dists, self.cat.keypoint_image, self.n_photos))
        return out

    def host_evidence(self, rgb: np.ndarray, photo: int, feats: list[LocalFeatures], votes: list[Votes]) -> Explained:
        """How much of the query photo `photo` explains (pixels agreeing after alignment), and what it does not.

        A host explains most of the query; a donor only its pasted object. The
        query's keypoints are matched directly against the photo's stored ones
        (ratio test; far more matches than survive the global k-NN for a
        plain host such as sea or sky), the stored photo gives the pixels. If
        it cannot be read, the spread of the matches is used instead.
        """
        h, w = rgb.shape[:2]
        lo, hi = np.searchsorted(self.cat.keypoint_image, [photo, photo + 1])
        db_desc = self.cat.descriptors[lo:hi].astype(np.float32)
        db_pts = self.cat.keypoints[lo:hi, :2].astype(np.float64)
        # the orientation (as is, mirrored) that voted more for this photo
        flip = int(len(votes) > 1 and votes[1].counts[photo] > votes[0].counts[photo])
        f = feats[flip]
        pairs = match_ratio(f.descriptors.astype(np.float32), db_desc)
        best_src = db_pts[pairs[:, 1]]
        best_dst = f.keypoints[pairs[:, 0], :2].astype(np.float64)
        if flip:
            best_dst[:, 0] = w - best_dst[:, 0]
        if len(best_src) < 4:
            return Explained.nothing()
        try:
            original = load_rgb(self.cat.paths[photo])
        except ImageError:
            return Explained(spread(best_dst, w, h), None, spread(best_dst, w, h))
        return explained_share(rgb, original, best_src, best_dst)

    def pick_host(
        self, rgb: np.ndarray, counts: np.ndarray, dist0: np.ndarray, feats: list[LocalFeatures], votes: list[Votes]
    ) -> tuple[int, Explained]:
        """The photo that explains most of the query, among the vote leaders and the nearest whole images.

        If none explains even HOST_MIN_SCORE of it (a flat photo such as sand
        and sky aligns with nothing), the nearest whole image is taken: the vote
        leader is then often the donor, whose pasted object has the texture.
        """
        by_votes = [int(p) for p in np.argsort(-counts, kind="stable")[:HOST_CANDIDATES_VOTES] if counts[p] > 0]
        by_image = [int(p) for p in np.argsort(dist0, kind="stable")[:HOST_CANDIDATES_IMAGE] if np.isfinite(dist0[p])]
        candidates = list(dict.fromkeys(by_votes + by_image)) or [int(np.argmax(counts))]
        evidence = {p: self.host_evidence(rgb, p, feats, votes) for p in candidates}
        leader = by_votes[0] if by_votes else candidates[0]
        best = max(candidates, key=lambda p: (evidence[p].host_score, counts[p]))
        if evidence[best].host_score < HOST_MIN_SCORE and by_image:
            return by_image[0], evidence[by_image[0]]
        host = best if evidence[best].host_score > evidence[leader].host_score + HOST_MARGIN else leader
        return host, evidence[host]

    # -- ranking ----------------------------------------------------------
    def search_rgb(self, rgb: np.ndarray, top: int = 10, mode: str = "fused") -> list[Match]:
        """Ranked matches for one decoded query photo."""
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; one of {', '.join(MODES)}")
        pending = None
        if mode != "objects" and self.local.count == 0:  # an index without local features (--no-local)
            mode = "objects"
        if mode != "objects":  # local features on another thread while the networks run (both release the GIL)
            n = QUERY_KEYPOINTS
            pending = _POOL.submit(extract, rgb, n)
        boxes, emb = self.engine.objects(rgb)
        dist, q_of, row_of = self.object_distances(emb, top)
        counts = np.zeros(self.n_photos, np.float64)
        region = None
        if mode == "objects":
            score = np.where(np.isfinite(dist), -dist, -np.inf)
        else:
            feats = [pending.result()]
            votes = self.local_votes(feats)
            if not votes or votes[0].counts.max() < MIRROR_FALLBACK_VOTES:  # no host as is: try the mirror image
                feats.append(mirrored(feats[0], rgb.shape[1]))
                votes = self.local_votes(feats)
            counts = np.max([v.counts for v in votes], axis=0) if votes else counts
            if mode == "local":
                score = counts + 1e-3 * np.where(np.isfinite(dist), -dist, -10.0)
            else:
                score, region = self.fused_scores(rgb, dist, votes, feats, counts, emb[:1], top)
        order = np.argsort(-score, kind="stable")[:top]
        order = order[np.isfinite(score[order])]
        out = []
        for p in order:
            d, q_box = dist[p], boxes[q_of[p]]
            db_box = self.cat.object_boxes[row_of[p]] if np.isfinite(d) else np.zeros(4)
            if region is not None and region.distance[p] < d:  # the region is the query's closest object
                d, q_box, db_box = region.distance[p], region.box, self.cat.object_boxes[region.row_of[p]]
            if not np.isfinite(d):
                q_box = np.zeros(4)
            out.append(Match(self.cat.paths[p], float(score[p]), float(d), int(counts[p]), q_box.tolist(), db_box.tolist()))
        return out

    def whole_image_distances(self, emb0: np.ndarray) -> np.ndarray:
        """Squared L2 between the query's whole-image embedding and every photo's (object 0)."""
        rows = self.whole_rows
        d = np.full(self.n_photos, np.inf)
        d[self.cat.object_image[rows]] = self.cat.codec.distances(emb0, self.cat.codes[rows])[0]
        return d

    def fused_scores(
        self,
        rgb: np.ndarray,
        dist: np.ndarray,
        votes: list[Votes],
        feats: list[LocalFeatures],
        counts: np.ndarray,
        emb0: np.ndarray,
        top: int = 10,
    ) -> tuple[np.ndarray, Region | None]:
        """Host first (the photo that explains most of the query), then donors.

        Once the host is aligned, the largest part of the query it does not
        explain is the likely pasted object (the region). Donor candidates are
        ranked by reciprocal-rank fusion of (a) votes of the query keypoints the
        host does not explain plus those of the region's own keypoints, (b) the
        object distance of Eq. 7 and (c) the distance of the region's embedding
        to each photo's objects. A photo that at least VOTE_GATE region keypoints
        vote for comes before photos with embedding evidence only.
        """
        if not votes or counts.max() <= 0:
            return np.where(np.isfinite(dist), -dist, -np.inf), None
        host, explained = self.pick_host(rgb, counts, self.whole_image_distances(emb0), feats, votes)
        residual = np.max([v.residual_counts(host) for v in votes], axis=0).astype(np.float64)
        blob = changed_blob(explained.changed)
        region = None if blob is None else self.region_evidence(rgb, blob_box(blob), host, top, blob)
        if region is not None:
            residual += region.votes
        residual[host] = -1
        score = 1.0 / (RRF_K + _ranks(-(residual + 1e-3 * counts)))
        score += OBJECT_WEIGHT / (RRF_K + _ranks(np.where(np.isfinite(dist), dist, np.inf)))
        if region is not None:
            score += REGION_WEIGHT / (RRF_K + _ranks(np.where(np.isfinite(region.distance), region.distance, np.inf)))
        score += np.where(residual >= VOTE_GATE, 1.0 + residual, 0.0)
        score[host] = score.max() + 1.0  # the host first
        return score, region

    def region_evidence(
        self, rgb: np.ndarray, box: np.ndarray | None, host: int, top: int, blob: np.ndarray | None = None
    ) -> Region | None:
        """Eq. 7 distances of the region's embeddings (as is, mirrored) and its own keypoints' votes.

        The region's mirror image votes unless a photo other than the host
        gets REGION_CLEAR_VOTES votes from the region as it is (a mirrored paste
        finds nothing so, or only a few chance votes).
        """
        if box is None:
            return None
        pending = _POOL.submit(region_keypoints, rgb, box, blob)  # on the other core while the network runs
        emb = self.engine.region_embeddings(rgb, box)
        distance, _, row_of = self.object_distances(emb, top)
        features, width = pending.result()
        counts = np.zeros(self.n_photos)
        for view in (features, mirrored(features, width)):
            for votes in self.local_votes([view]):
                counts = np.maximum(counts, votes.counts)
            if np.delete(counts, host).max(initial=0) >= REGION_CLEAR_VOTES:
                break
        return Region(box, distance, row_of, counts.astype(np.float64))


@dataclass(frozen=True)
class Region:
    """The part of the query its host does not explain, and the evidence it gives per photo."""

    box: np.ndarray  # [x1, y1, x2, y2], query pixels
    distance: np.ndarray  # [P] Eq. 7 distance of the region's embeddings to each photo's objects (inf: not reached)
    row_of: np.ndarray  # [P] the stored object row nearest to the region
    votes: np.ndarray  # [P] votes of the region's own keypoints


@dataclass(frozen=True)
class Votes:
    """Accepted (query keypoint, stored keypoint row) pairs and votes per photo."""

    q_idx: np.ndarray
    db_rows: np.ndarray
    photos: np.ndarray
    counts: np.ndarray  # distinct query keypoints per photo

    @classmethod
    def from_knn(cls, rows: np.ndarray, dists: np.ndarray, keypoint_image: np.ndarray, n_photos: int) -> Votes:
        ok = dists < VOTE_RATIO * dists[:, -1:]
        q_idx = np.repeat(np.arange(len(rows)), rows.shape[1])[ok.ravel()]
        db_rows = rows.ravel()[ok.ravel()]
        photos = keypoint_image[db_rows]
        # one vote per query keypoint per photo: keep the first (nearest) pair
        _, first = np.unique(q_idx.astype(np.int64) * n_photos + photos, return_index=True)
        q_idx, db_rows, photos = q_idx[first], db_rows[first], photos[first]
        return cls(q_idx, db_rows, photos, np.bincount(photos, minlength=n_photos))

    def residual_counts(self, host: int) -> np.ndarray:
        """Votes of the query keypoints that do not vote for `host`."""
        explained = np.unique(self.q_idx[self.photos == host])
        keep = ~np.isin(self.q_idx, explained)
        return np.bincount(self.photos[keep], minlength=len(self.counts))


def match_ratio(a: np.ndarray, b: np.ndarray, ratio: float = 0.8) -> np.ndarray:
    """[M, 2] index pairs (a, b) passing Lowe's ratio test (L2 distances, from one matrix product)."""
    if len(a) < 2 or len(b) < 2:
        return np.zeros((0, 2), np.int64)
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    d2 = (b * b).sum(1)[None, :] - 2.0 * (a @ b.T)  # squared distance minus |a|^2, which ranks alike per row
    rows = np.arange(len(a))
    nearest = d2.argmin(1)
    first = d2[rows, nearest].copy()
    d2[rows, nearest] = np.inf
    second = d2.min(1)
    norm_a = (a * a).sum(1)
    first, second = np.sqrt(np.maximum(first + norm_a, 0)), np.sqrt(np.maximum(second + norm_a, 0))
    good = np.flatnonzero(first < ratio * second)
    return np.stack([good, nearest[good]], 1).astype(np.int64)


@dataclass(frozen=True)
class Explained:
    """How much of the query a stored photo explains, and where it does not (the candidate pasted region)."""

    share: float  # share of the query's pixels that agree with the aligned photo
    changed: np.ndarray | None  # uint8 0/255 [H, W]: inside the aligned photo but disagreeing; None if not aligned
    frame: float = 0.0  # the same share over the query's outer band (HOST_FRAME of its smaller side)

    @classmethod
    def nothing(cls) -> Explained:
        return cls(0.0, None)

    @property
    def host_score(self) -> float:
        """A host explains most of the query and its frame: a pasted object seldom reaches the edges all round."""
        return 0.5 * (self.share + self.frame)


def explained_share(query: np.ndarray, original: np.ndarray, src: np.ndarray, dst: np.ndarray) -> Explained:
    """Align `original` to the query by the pairs src -> dst (similarity, RANSAC) and compare pixels."""
    h, w = query.shape[:2]
    cv2.setRNGSeed(7)
    a, inl = cv2.estimateAffinePartial2D(src, dst, method=cv2.RANSAC, ransacReprojThreshold=5.0)
    if a is None or inl is None or inl.sum() < 4:
        return Explained.nothing()
    warped = cv2.warpAffine(original, a, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    inside = cv2.warpAffine(np.full(original.shape[:2], 255, np.uint8), a, (w, h), flags=cv2.INTER_NEAREST) > 0
    agree = colour_difference(query, warped, sigma=2.0) < 12.0
    band = max(1, round(HOST_FRAME * min(h, w)))
    frame = np.ones((h, w), bool)
    frame[band:-band, band:-band] = False
    explained = inside & agree
    return Explained(float(explained.mean()), (inside & ~agree).astype(np.uint8) * 255, float(explained[frame].mean()))


def region_keypoints(rgb: np.ndarray, box: np.ndarray, blob: np.ndarray | None = None) -> tuple[LocalFeatures, int]:
    """RootSIFT of a region resized to REGION_KEYPOINT_SIDE (in the resized crop's coordinates) and its width.

    Enlarged to about the size a pasted object has in its source photo, a
    small paste yields keypoints at the scales the source's stored keypoints
    were taken at, instead of the few the whole query gives it; enlarged much
    further, it only interpolates detail the source's keypoints never saw.
    With `blob` (bool [H, W], the changed pixels) keypoints are taken only
    there (grown by REGION_BLOB_GROW of the region's size): the host around a
    pasted object would otherwise take most of the keypoint budget and vote
    for the host, which is already known.
    """
    crop = crop_region(rgb, box, REGION_MARGIN)
    scale = REGION_KEYPOINT_SIDE / max(crop.shape[:2])
    size = (max(8, round(crop.shape[1] * scale)), max(8, round(crop.shape[0] * scale)))
    crop = cv2.resize(crop, size, interpolation=cv2.INTER_CUBIC if scale > 1 else cv2.INTER_AREA)
    where = None
    if blob is not None:
        grown = grown_blob(blob, box).astype(np.uint8)
        where = cv2.resize(crop_region(grown[:, :, None], box, REGION_MARGIN)[:, :, 0], size, interpolation=cv2.INTER_NEAREST) > 0
    return extract(crop, REGION_KEYPOINTS, where), crop.shape[1]


def grown_blob(blob: np.ndarray, box: np.ndarray) -> np.ndarray:
    """The changed pixels grown by REGION_BLOB_GROW of the region's longer side (bool [H, W])."""
    grow = max(1, round(REGION_BLOB_GROW * float(max(box[2] - box[0], box[3] - box[1]))))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * grow + 1, 2 * grow + 1))
    return cv2.dilate(blob.astype(np.uint8), kernel) > 0


def changed_blob(changed: np.ndarray | None) -> np.ndarray | None:
    """The largest cleaned-up changed blob (bool [H, W]), or None (nothing, or over half the photo).

    Over half the photo means the alignment explains little: no reliable region.
    """
    if changed is None:
        return None
    m = clean_mask(changed, REGION_MIN_SHARE)
    n, labels, stats, _ = cv2.connectedComponentsWithStats((m > 0).astype(np.uint8), connectivity=8)
    if n <= 1:
        return None
    i = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    if stats[i, cv2.CC_STAT_AREA] > REGION_MAX_SHARE * m.size:
        return None
    return labels == i


def blob_box(blob: np.ndarray) -> np.ndarray:
    """Box [x1, y1, x2, y2] (exclusive right/bottom) of a non-empty bool mask."""
    ys, xs = np.nonzero(blob)
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float32)


def changed_region(changed: np.ndarray | None) -> np.ndarray | None:
    """Box [x1, y1, x2, y2] of the largest cleaned-up changed blob, or None (see `changed_blob`)."""
    blob = changed_blob(changed)
    return None if blob is None else blob_box(blob)


def _ranks(values: np.ndarray) -> np.ndarray:
    order = np.argsort(values, kind="stable")
    ranks = np.empty(len(values), np.float64)
    ranks[order] = np.arange(len(values))
    return ranks


def _graphs_as_reader(store: Store, cat: Catalogue) -> tuple[Graph | ivf.IVFPQ | None, Graph]:
    """Graphs for a reader: a stale graph is rebuilt in memory and saved only if no writer is at work."""
    if not os.access(store.dir, os.W_OK):
        return load_graphs(store, cat, writable=False)
    try:
        with writer_lock(store.dir):
            return load_graphs(store, cat, writable=True)
    except StoreError:  # a writer holds the lock: its own refresh will save the graphs
        return load_graphs(store, cat, writable=False)
