"""`oesir search`: rank indexed photos as possible sources of a query photo.

Two kinds of evidence, each computed exactly over the whole index:

* objects (the paper's Eq. 7): D(q, d) = min over object pairs of the squared
  L2 distance between whitened object embeddings. hnswlib proposes the
  candidate photos; their distances are then recomputed exactly, so the ranking
  equals brute force over the stored embeddings.
* local features: every RootSIFT descriptor of the query, and of its mirror
  image (splices are often mirrored), votes for the photos of its nearest
  stored descriptors; a photo's score is the number of query keypoints that
  voted for it.

The default ranking ("fused") combines both by reciprocal-rank fusion and puts
the likely host first: of the best candidates, the one whose matching keypoints
spread over most of the query. `mode="objects"` is the paper's method alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .ann import Graph, cached_graph
from .engine import Engine
from .local import LocalFeatures, extract, spread
from .store import Catalogue, Store

MODES = ("fused", "objects", "local")


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
            "distance": round(float(self.distance), 6),
            "score": round(float(self.score), 6),
            "votes": int(self.votes),
            "query_box": [round(float(v), 1) for v in self.query_box],
            "db_box": [round(float(v), 1) for v in self.db_box],
        }


def graph_stamp(store: Store, kind: str) -> dict:
    return {"generation": store.generation, "model_version": store.meta("model_version"), "kind": kind}


def refresh_graphs(store: Store) -> None:
    """Rebuild the derived hnswlib graphs if they are missing or stale (writer side)."""
    cat = store.load_all()
    cached_graph(store.dir / "objects.hnsw", cat.embeddings, graph_stamp(store, "objects"), writable=True, ef_construction=200)
    cached_graph(store.dir / "local.hnsw", _desc_float(cat.descriptors), graph_stamp(store, "local"), writable=True)


def _desc_float(desc: np.ndarray) -> np.ndarray:
    return desc.astype(np.float32) * (1.0 / 255.0)


class Searcher:
    """An open index plus the engine; search one query photo at a time."""

    def __init__(self, store: Store, engine: Engine):
        self.store = store
        self.engine = engine
        self.cat: Catalogue = store.load_all()
        writable = _can_write(store)
        self.objects: Graph = cached_graph(
            store.dir / "objects.hnsw", self.cat.embeddings, graph_stamp(store, "objects"), writable, ef_construction=200
        )
        self.local: Graph = cached_graph(
            store.dir / "local.hnsw", _desc_float(self.cat.descriptors), graph_stamp(store, "local"), writable
        )
        self.n_photos = len(self.cat.paths)

    # -- evidence ---------------------------------------------------------
    def object_distances(self, query_emb: np.ndarray, top: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Eq. 7 for every photo reached: (distance [P], query object [P], db object row [P]); inf if not reached.

        hnswlib proposes, for each query object, its nearest stored objects;
        every photo owning one of them is then scored exactly over all its objects.
        """
        dist = np.full(self.n_photos, np.inf, np.float32)
        q_of = np.zeros(self.n_photos, np.int64)
        row_of = np.zeros(self.n_photos, np.int64)
        if self.objects.count == 0:
            return dist, q_of, row_of
        k = min(self.objects.count, max(64, 8 * top))
        rows, _ = self.objects.knn(query_emb, k, ef=2 * k)
        photos = np.unique(self.cat.object_image[rows.ravel()])
        mask = np.isin(self.cat.object_image, photos)
        cand_rows = np.flatnonzero(mask)
        d = squared_l2(query_emb, self.cat.embeddings[cand_rows])  # [Q, R]
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

    def local_votes(self, feats: list[LocalFeatures], width: int, height: int, k: int = 5) -> tuple[np.ndarray, np.ndarray]:
        """Votes per photo (max over the query and its mirror) and the spread of the voters."""
        votes = np.zeros(self.n_photos, np.float32)
        spreads = np.zeros(self.n_photos, np.float32)
        if self.local.count == 0:
            return votes, spreads
        for mirrored, f in enumerate(feats):
            if len(f) == 0:
                continue
            rows, dists = self.local.knn(_desc_float(f.descriptors), k, ef=48)
            owner = self.cat.keypoint_image[rows]  # [N, k]
            ok = dists < VOTE_MAX_DIST
            # one vote per query keypoint per photo
            pairs = np.unique(
                np.stack([np.repeat(np.arange(len(f)), owner.shape[1])[ok.ravel()], owner.ravel()[ok.ravel()]], 1), axis=0
            )
            v = np.bincount(pairs[:, 1], minlength=self.n_photos).astype(np.float32)
            better = v > votes
            if better.any():
                pts = f.keypoints[:, :2].copy()
                if mirrored:
                    pts[:, 0] = width - pts[:, 0]
                for p in np.flatnonzero(better & (v >= 3)):
                    spreads[p] = spread(pts[pairs[pairs[:, 1] == p, 0]], width, height)
                votes = np.maximum(votes, v)
        return votes, spreads

    # -- ranking ----------------------------------------------------------
    def search_rgb(self, rgb: np.ndarray, top: int = 10, mode: str = "fused") -> list[Match]:
        """Ranked matches for one decoded query photo."""
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; one of {', '.join(MODES)}")
        h, w = rgb.shape[:2]
        boxes, _, _ = self.engine.boxes(rgb)
        emb = self.engine.embed(rgb, boxes)
        dist, q_of, row_of = self.object_distances(emb, top)
        votes = np.zeros(self.n_photos, np.float32)
        spreads = np.zeros(self.n_photos, np.float32)
        if mode != "objects":
            n = self.engine.config.local_keypoints
            feats = [extract(rgb, n), extract(rgb, n, mirror=True)]
            votes, spreads = self.local_votes(feats, w, h)
        score = fuse(dist, votes, spreads, mode)
        order = np.argsort(-score, kind="stable")[:top]
        order = order[np.isfinite(score[order])]
        out = []
        for p in order:
            db_box = self.cat.object_boxes[row_of[p]] if np.isfinite(dist[p]) else np.zeros(4)
            q_box = boxes[q_of[p]] if np.isfinite(dist[p]) else np.zeros(4)
            out.append(Match(self.cat.paths[p], float(score[p]), float(dist[p]), int(votes[p]), q_box.tolist(), db_box.tolist()))
        return out


VOTE_MAX_DIST = 0.25  # squared L2 between RootSIFT (unit-norm) descriptors counted as a match


def fuse(dist: np.ndarray, votes: np.ndarray, spreads: np.ndarray, mode: str) -> np.ndarray:
    """Higher is better. objects: -distance; local: votes; fused: RRF of both + host rule."""
    if mode == "objects":
        return np.where(np.isfinite(dist), -dist, -np.inf)
    if mode == "local":
        return votes + 1e-3 * np.where(np.isfinite(dist), -dist, -10.0)
    r_obj = _ranks(np.where(np.isfinite(dist), dist, np.inf))
    r_loc = _ranks(-votes)
    score = 3.0 / (RRF_K + r_loc) + 1.0 / (RRF_K + r_obj)
    # Host rule: among the two best, prefer the one whose matches spread over the query.
    top2 = np.argsort(-score)[:2]
    if len(top2) == 2 and spreads[top2[1]] > spreads[top2[0]] + 0.05 and votes[top2[1]] >= 10:
        score[top2[1]], score[top2[0]] = score[top2[0]], score[top2[1]]
    return score


RRF_K = 10.0


def _ranks(values: np.ndarray) -> np.ndarray:
    order = np.argsort(values, kind="stable")
    ranks = np.empty(len(values), np.float64)
    ranks[order] = np.arange(len(values))
    return ranks


def squared_l2(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """[A, B] squared distances, clipped at 0 (exact enough for unit vectors)."""
    return np.maximum((a * a).sum(1)[:, None] + (b * b).sum(1)[None] - 2.0 * a @ b.T, 0.0)


def _can_write(store: Store) -> bool:
    import os

    return os.access(store.dir, os.W_OK)
