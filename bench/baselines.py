"""The issue's comparison rows for bench/retrieval.py, from one pass over every photo.

Each photo (database and queries) goes through the detector (up to 16
class-agnostic boxes, score >= 0.05) and the teacher (Lite0 at 512) once; from
that pass come:

* global descriptors of the stride-32 map: MAC, SPoC, GeM (p=3) and R-MAC
  (max-pooled regions at 3 scales, ~40% overlap, summed; no region whitening);
* OE-SIR with k = 1, 2, 4, 8, 16 detections + the whole image (Table 4): ROIAlign
  (max) embeddings, PCA-whitened with the shipped whitening, Eq. 7;
* OE-HoG: the same k = 8 boxes described by HoG (64x64 grey, 1,764-d) instead, Eq. 7;
* OE-detector: the same k = 8 boxes, ROIAlign (max) on the detector's own
  backbone maps (F3 as stride 16, F4 as stride 32), PCA-whitened with a
  whitening learned here on imagenet-sample/train, Eq. 7;
* SIFT provenance filtering: 500 RootSIFT keypoints per photo, k-NN voting
  (hnswlib, 5 neighbours, ratio 0.7 to the 5th), no mirror;
* its tuned form (the issue's strongest peer): 2,000 RootSIFT keypoints per
  photo, the query also searched mirrored (max of the two vote counts); of the
  top two photos the one whose voting query keypoints spread over more of the
  query first ("spread" host rule), kept first; the others by reciprocal-rank fusion (3:1, k = 60)
  with OE-SIR k = 8 (the issue fused with a weaker OE-SIR: boxes >= 0.3, s32);
* PDQ (the `pdqhash` package, `[bench]` extra): 256-bit hash, Hamming distance.

Each system writes one results file per query set, in score.py's format.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import hnswlib
import numpy as np

from oesir_cli.detector import Detector, postprocess
from oesir_cli.detector import preprocess as det_preprocess
from oesir_cli.embed import Whitening, learn_whitening, region_descriptors
from oesir_cli.engine import EngineConfig
from oesir_cli.imageio import load_rgb
from oesir_cli.keypoints import LocalFeatures, extract, mirrored, spread
from oesir_cli.registry import VIEW_SIDE, verified_file
from oesir_cli.teacher import FeatureMaps, Teacher

GLOBAL = ("MAC", "SPoC", "GeM", "R-MAC")
KS = (1, 2, 4, 8, 16)
SIFT_KEYPOINTS = 500
TUNED_KEYPOINTS = 2000
TUNED_FUSION = (3.0, 1.0, 60.0)  # RRF weights (SIFT, OE-SIR) and its k
_HOG = cv2.HOGDescriptor((64, 64), (16, 16), (8, 8), (8, 8), 9)


def pooled(fmap: np.ndarray, kind: str) -> np.ndarray:
    """MAC / SPoC / GeM (p=3) / R-MAC of a (C, H, W) map, L2-normalised."""
    x = np.maximum(fmap, 0)
    if kind == "R-MAC":
        v = sum(_l2(r.reshape(r.shape[0], -1).max(1)) for r in rmac_regions(x))
    else:
        flat = x.reshape(x.shape[0], -1)
        v = flat.max(1) if kind == "MAC" else flat.mean(1) if kind == "SPoC" else np.cbrt((flat**3).mean(1))
    return _l2(v)


def rmac_regions(x: np.ndarray, levels: int = 3) -> list[np.ndarray]:
    """Square regions of side 2 min(H, W) / (l + 1) at levels l = 1..3, ~40% overlap (Tolias et al.), plus the whole map."""
    _, h, w = x.shape
    out = [x]
    for level in range(1, levels + 1):
        side = max(1, int(round(2 * min(h, w) / (level + 1))))
        for ys in _starts(h, side, level):
            for xs in _starts(w, side, level):
                out.append(x[:, ys : ys + side, xs : xs + side])
    return out


def _starts(n: int, side: int, level: int) -> list[int]:
    count = max(1, level + (1 if n > side * (level + 1) * 0.6 else 0))
    return sorted({int(round(v)) for v in np.linspace(0, max(n - side, 0), count)})


def hog(rgb: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    out = []
    for x1, y1, x2, y2 in boxes.astype(int):
        patch = grey[max(y1, 0) : max(y2, y1 + 1), max(x1, 0) : max(x2, x1 + 1)]
        out.append(_HOG.compute(cv2.resize(patch, (64, 64), interpolation=cv2.INTER_AREA)).ravel())
    return _l2(np.asarray(out, np.float32))


def _l2(x: np.ndarray) -> np.ndarray:
    return (x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)).astype(np.float32)


class Describer:
    """Everything the comparison rows need from one photo."""

    def __init__(self) -> None:
        cfg = EngineConfig()
        self.detector, self.teacher = Detector(), Teacher(cfg.teacher, cfg.long_side)
        self.whitening = Whitening.load(verified_file(cfg.whitening_file())[0])
        try:
            import pdqhash

            self.pdq: Callable | None = pdqhash.compute
        except ImportError:
            self.pdq = None

    def __call__(self, path: Path) -> dict:
        rgb = load_rgb(path)
        h, w = rgb.shape[:2]
        session = self.detector.model.session
        heads = dict(zip([o.name for o in session.get_outputs()], session.run(None, {"image": det_preprocess(rgb)})))
        det = postprocess(heads, w, h, min_score=0.05, limit=max(KS), class_agnostic=True)
        boxes = np.concatenate([np.array([[0, 0, w, h]], np.float32), det.boxes]).astype(np.float32)
        maps = self.teacher.features(rgb)
        out = {k: pooled(maps.s32, k) for k in GLOBAL}
        out["objects"] = self.whitening.apply(region_descriptors(maps, boxes))
        f3, f4 = (heads[k][0].transpose(2, 0, 1) for k in ("F3", "F4"))
        own = FeatureMaps(f3, f4, VIEW_SIDE / w, VIEW_SIDE / h)
        out["detector"] = region_descriptors(own, boxes[:9])  # whitened once the training photos are described
        out["hog"] = hog(rgb, boxes[:9])
        out["sift"] = extract(rgb, SIFT_KEYPOINTS).descriptors
        tuned = extract(rgb, TUNED_KEYPOINTS)
        out["sift2000"], out["sift2000_xy"], out["size"] = tuned.descriptors, tuned.keypoints, (w, h)
        if self.pdq:
            bits, _ = self.pdq(np.ascontiguousarray(rgb))
            out["pdq"] = np.asarray(bits, np.uint8)
        return out

    def detector_whitening(self, train_files: list[Path]) -> Whitening:
        """PCA whitening of the detector's own region descriptors, learned on the training photos."""
        return learn_whitening(np.concatenate([self(f)["detector"] for f in train_files]), 256)


def eq7(query: np.ndarray, db: list[np.ndarray]) -> np.ndarray:
    """Eq. 7 distance of a query's objects to every database photo's objects."""
    flat = np.concatenate(db)
    owner = np.repeat(np.arange(len(db)), [len(d) for d in db])
    d = ((query * query).sum(1)[:, None] - 2 * query @ flat.T + (flat * flat).sum(1)[None]).min(0)
    out = np.full(len(db), np.inf)
    np.minimum.at(out, owner, d)
    return out


SYSTEMS = (*GLOBAL, *(f"OE-SIR k={k}" for k in KS), "OE-HoG", "OE-detector", "SIFT-500", "SIFT tuned", "PDQ")


def run(
    db_files: list[Path],
    queries: dict[str, list[Path]],
    train_files: list[Path],
    out: Path,
    progress: Callable[[str], None],
    systems: list[str] | None = None,
) -> dict[str, float]:
    """Write `<system>-<set>.jsonl` for every comparison system (or those named); returns indexing s/photo (shared pass)."""
    describe = Describer()
    chosen = [s for s in (systems or SYSTEMS) if s != "PDQ" or describe.pdq]
    unknown = set(chosen) - set(SYSTEMS)
    if unknown:
        raise ValueError(f"unknown systems: {', '.join(sorted(unknown))}")
    own_whitening = None
    if "OE-detector" in chosen:
        progress(f"whitening of the detector's features: {len(train_files)} training photos")
        own_whitening = describe.detector_whitening(train_files)
    t0 = time.perf_counter()
    db = []
    for i, f in enumerate(db_files):
        db.append(describe(f))
        if own_whitening:
            db[-1]["detector"] = own_whitening.apply(db[-1]["detector"])
        if i % 200 == 0:
            progress(f"database {i}/{len(db_files)}")
    per_photo = (time.perf_counter() - t0) / len(db_files)
    sift = Votes.graph(db, "sift") if "SIFT-500" in chosen else None
    tuned = Votes.graph(db, "sift2000") if "SIFT tuned" in chosen else None
    mats = {k: np.stack([d[k] for d in db]) for k in GLOBAL}
    pdq = np.stack([d["pdq"] for d in db]) if "PDQ" in chosen else None
    for name, files in queries.items():
        handles = {s: open(out / f"{slug(s)}-{name}.jsonl", "w") for s in chosen}
        for q in files:
            d = describe(q)
            scores = {k: mats[k] @ d[k] for k in GLOBAL}
            for k in KS:
                scores[f"OE-SIR k={k}"] = -eq7(d["objects"][: k + 1], [x["objects"][: k + 1] for x in db])
            scores["OE-HoG"] = -eq7(d["hog"], [x["hog"] for x in db])
            if own_whitening:
                scores["OE-detector"] = -eq7(own_whitening.apply(d["detector"]), [x["detector"] for x in db])
            if sift:
                scores["SIFT-500"] = sift.counts(d["sift"])
            if tuned:
                scores["SIFT tuned"] = tuned_sift(tuned, d, scores["OE-SIR k=8"])
            if pdq is not None:
                scores["PDQ"] = -(pdq != d["pdq"][None]).sum(1).astype(float)
            for s in chosen:
                order = np.argsort(-scores[s], kind="stable")[:100]
                handles[s].write(json.dumps({"query": str(q), "matches": [{"image": str(db_files[i])} for i in order]}) + "\n")
        for fh in handles.values():
            fh.close()
        progress(f"queries {name} done")
    return {s: per_photo for s in chosen}


class Votes:
    """A k-NN graph over every database photo's RootSIFT descriptors, and provenance-filtering votes from it."""

    def __init__(self, graph: hnswlib.Index, owner: np.ndarray, n_photos: int):
        self.graph, self.owner, self.n_photos = graph, owner, n_photos

    @classmethod
    def graph(cls, db: list[dict], key: str) -> Votes:
        desc = np.concatenate([d[key] for d in db]).astype(np.float32) / 255.0
        graph = hnswlib.Index(space="l2", dim=128)
        graph.init_index(len(desc), M=16, ef_construction=64)
        graph.add_items(desc)
        graph.set_ef(32)
        return cls(graph, np.repeat(np.arange(len(db)), [len(d[key]) for d in db]), len(db))

    def pairs(self, desc: np.ndarray) -> np.ndarray:
        """Distinct (query keypoint, photo) pairs of neighbours passing the ratio test (0.7 to the 5th)."""
        if len(desc) == 0:
            return np.zeros((0, 2), np.int64)
        rows, dists = self.graph.knn_query(desc.astype(np.float32) / 255.0, k=5)
        ok = (dists < 0.7 * dists[:, -1:]).ravel()
        keypoint = np.repeat(np.arange(len(rows)), rows.shape[1])[ok]
        return np.unique(np.stack([keypoint, self.owner[rows.ravel()[ok]]], 1), axis=0)

    def counts(self, desc: np.ndarray) -> np.ndarray:
        """Provenance filtering: each query keypoint votes once for the photo of each accepted neighbour."""
        return np.bincount(self.pairs(desc)[:, 1], minlength=self.n_photos).astype(float)


def tuned_sift(votes: Votes, query: dict, objects: np.ndarray) -> np.ndarray:
    """The issue's tuned local-feature pipeline: mirrored voting, the spread host rule, RRF with OE-SIR."""
    w, h = query["size"]
    feats = LocalFeatures(query["sift2000_xy"], query["sift2000"])
    views = [feats, mirrored(feats, w)]
    pairs = [votes.pairs(v.descriptors) for v in views]
    counts = [np.bincount(p[:, 1], minlength=votes.n_photos) for p in pairs]
    best = np.maximum(*counts).astype(float)
    top2 = np.argsort(-best, kind="stable")[:2]

    def spread_of(photo: int) -> float:
        view = int(counts[1][photo] > counts[0][photo])
        keypoints = pairs[view][pairs[view][:, 1] == photo, 0]
        return spread(views[view].keypoints[keypoints, :2], w, h)

    host = int(top2[0])
    if best[top2[1]] > 0 and spread_of(int(top2[1])) > spread_of(host):
        host = int(top2[1])
    w_sift, w_obj, k = TUNED_FUSION
    fused = w_sift / (k + _ranks(-best)) + w_obj / (k + _ranks(-objects))
    fused[host] = fused.max() + 1.0  # the host rule's choice stays first; the fusion ranks the others
    return fused


def _ranks(values: np.ndarray) -> np.ndarray:
    ranks = np.empty(len(values))
    ranks[np.argsort(values, kind="stable")] = np.arange(len(values))
    return ranks


def slug(name: str) -> str:
    return name.replace(" ", "_").replace("=", "")
