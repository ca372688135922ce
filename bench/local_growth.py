"""Growth of the compact local-feature index (issue #16): the standard database plus simulated photos, to 10^6.

    python bench/local_growth.py --index WORK/new/idx --data ../shared/data --work /work/wk/growth \\
        --sizes 10000,100000,1000000 --per-set 50

The standard database is a real oesir index (`--index`, made by `oesir index`; it is copied
and re-encoded with `--codec pq`, the object codec for collections this large, see README
"Collections larger than one machine"). The simulated photos are built from real photos that
are never part of the database, `imagenet-sample/train`:

* local features: each training photo is cut into `--views` augmented views (random crop of
  55-100% of each side, rescale 0.5-1.0, rotation of up to 12 degrees, half of them mirrored),
  RootSIFT is taken on each view exactly as `oesir index` takes it, and coded with the shipped
  vocabulary. A simulated photo is one view's coded keypoints, a random 75-100% of them;
* objects: the training photo's own detections and embeddings (real, from the same engine).

So every stored descriptor comes from a real photo; with V views the N simulated photos reuse
each view N / V times (reported), which makes the simulated collection denser in near-copies
than a real one: a pessimistic setting for the votes, whose ratio test meets those copies.

Per size N (standard database + N - 1,285 simulated photos): bytes per photo of the index
folder; seconds per photo of `oesir index` adding 100 real photos (imagenet-sample/distractors
would be in the database, so the first 100 of `imagenet-sample/train` are used: extraction plus
the segment write and merges at that size; they stay, 100 new ones per size); and in a fresh process, the searcher's opening
time, p50 / p90 seconds per query and peak RSS, over the first `--per-set` queries of each dev
set, with their host@1 and donor@10 (`score.py`).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np

from oesir_cli import api
from oesir_cli.engine import Engine, EngineConfig
from oesir_cli.imageio import load_rgb
from oesir_cli.keypoints import STORED_KEYPOINTS, extract
from oesir_cli.postings import Entries, pack_geometry
from oesir_cli.schema import pack_objects, row_digest, split_path
from oesir_cli.store import Store, writer_lock
from oesir_cli.vocabulary import as_float

SETS = ("casia-sir", "casia-wild", "small-splice", "composites")
BATCH = 20_000  # simulated photos per committed segment


def augmented_views(rgb: np.ndarray, n: int, rng: np.random.Generator) -> list[np.ndarray]:
    h, w = rgb.shape[:2]
    out = []
    for _ in range(n):
        ch, cw = int(h * rng.uniform(0.55, 1.0)), int(w * rng.uniform(0.55, 1.0))
        y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
        view = rgb[y : y + ch, x : x + cw]
        s = rng.uniform(0.5, 1.0)
        view = cv2.resize(view, (max(32, int(cw * s)), max(32, int(ch * s))), interpolation=cv2.INTER_AREA)
        m = cv2.getRotationMatrix2D((view.shape[1] / 2, view.shape[0] / 2), rng.uniform(-12, 12), 1.0)
        view = cv2.warpAffine(view, m, (view.shape[1], view.shape[0]), borderMode=cv2.BORDER_REFLECT)
        if rng.random() < 0.5:
            view = view[:, ::-1]
        out.append(np.ascontiguousarray(view))
    return out


def build_pool(data: Path, views: int, work: Path) -> Path:
    """Coded keypoints of every view and objects of every training photo, saved to WORK/pool.npz."""
    path = work / "pool.npz"
    if path.exists():
        return path
    rng = np.random.default_rng(0)
    engine = Engine(EngineConfig())
    store = Store(work / "vocab-only", create=True)  # only for its vocabulary
    vocabulary, _ = store.vocabulary()
    files = sorted((data / "imagenet-sample/train").iterdir())
    words, codes, norms, geometry, view_of, sizes = [], [], [], [], [], []
    obj_boxes, obj_scores, obj_classes, obj_emb, photo_of_view = [], [], [], [], []
    for i, f in enumerate(files):
        rgb = load_rgb(f)
        boxes, scores, classes, descriptors = engine.raw_objects(rgb)
        obj_boxes.append(boxes)
        obj_scores.append(scores)
        obj_classes.append(classes)
        obj_emb.append(engine.whitening.apply(descriptors))
        for view in augmented_views(rgb, views, rng):
            feats = extract(view, STORED_KEYPOINTS)
            x = as_float(feats.descriptors)
            w = vocabulary.nearest_words(x)[:, 0]
            c = vocabulary.encode(x, w)
            words.append(w)
            codes.append(c)
            norms.append(vocabulary.norms(w, c))
            geometry.append(pack_geometry(feats.keypoints))
            view_of.append(np.full(len(w), len(sizes)))
            sizes.append(view.shape[:2])
            photo_of_view.append(i)
        print(f"pool: {i + 1}/{len(files)} photos", file=sys.stderr, flush=True)
    np.savez(
        path,
        words=np.concatenate(words), codes=np.concatenate(codes), norms=np.concatenate(norms),
        geometry=np.concatenate(geometry), view_of=np.concatenate(view_of), sizes=np.array(sizes),
        photo_of_view=np.array(photo_of_view), obj_count=np.array([len(b) for b in obj_boxes]),
        obj_boxes=np.concatenate(obj_boxes), obj_scores=np.concatenate(obj_scores),
        obj_classes=np.concatenate(obj_classes), obj_emb=np.concatenate(obj_emb),
    )  # fmt: skip
    store.close()
    return path


def grow(idx: Path, pool_path: Path, target: int, seed: int) -> dict:
    """Add simulated photos to the index at `idx` until it holds `target` photos."""
    pool = np.load(pool_path)
    starts = np.r_[0, np.cumsum(np.bincount(pool["view_of"]))]
    obj_start = np.r_[0, np.cumsum(pool["obj_count"])]
    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    with writer_lock(idx):
        store = Store(idx, locked=True)
        codec = store.codec()
        have = store.count()[0]
        # each training photo's objects, encoded once: (objects blob, embeddings blob) per view's photo
        blobs = {}
        for p in range(len(pool["obj_count"])):
            lo, hi = obj_start[p], obj_start[p + 1]
            blobs[p] = (pool["obj_boxes"][lo:hi], pool["obj_scores"][lo:hi], pool["obj_classes"][lo:hi],
                        codec.encode(pool["obj_emb"][lo:hi]).tobytes())  # fmt: skip
        n_views = len(pool["sizes"])
        added = 0
        while have + added < target:
            n = min(BATCH, target - have - added)
            parts = []
            with store.transaction() as db:
                folder = store._folder_id(db, split_path(f"/simulated/{have + added:08d}/x.jpg")[0])
                for k in range(n):
                    v = int(rng.integers(n_views))
                    p = int(pool["photo_of_view"][v])
                    h, w = (int(s) for s in pool["sizes"][v])
                    boxes, scores, classes, emb = blobs[p]
                    ph, pw = int(boxes[0, 3]), int(boxes[0, 2])  # the whole-photo box: the training photo's size
                    objects = pack_objects(boxes, scores, classes, pw, ph)
                    name = f"sim{have + added + k:08d}.jpg"
                    sha = f"{have + added + k:064x}"
                    image_id = db.execute(
                        "INSERT INTO photos(folder, name, sha256, size, mtime_ns, width, height, indexed_at, objects, "
                        "embeddings, digest) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                        (folder, name, bytes.fromhex(sha), 0, 0, pw, ph, 0, objects, emb,
                         row_digest(f"/simulated/{have + added:08d}/{name}", sha, objects, emb, b"", b"")),
                    ).lastrowid  # fmt: skip
                    lo, hi = starts[v], starts[v + 1]
                    keep = lo + np.flatnonzero(rng.random(hi - lo) < rng.uniform(0.75, 1.0))
                    parts.append((image_id, keep))
                ids = np.concatenate([np.full(len(k), i, np.int64) for i, k in parts])
                rows = np.concatenate([k for _, k in parts])
                entries = Entries(
                    ids, pool["words"][rows].astype(np.int64), pool["codes"][rows], pool["norms"][rows], pool["geometry"][rows]
                )
                segment = store._write_segment(db, entries, level=_level_of(n))
                db.executemany("UPDATE photos SET segment=? WHERE id=?", [(segment, i) for i, _ in parts])
            added += n
            print(f"grow: {have + added}/{target} photos", file=sys.stderr, flush=True)
        store.merge_segments()
        store.close()
    return {"simulated_added": added, "grow_s": time.perf_counter() - t0, "views": int(n_views)}


def _level_of(photos: int) -> int:
    """The LSM level a segment of this many photos would have reached (16 photos per level-0 batch, FANOUT 8)."""
    return max(0, int(np.log(max(photos, 16) / 16) / np.log(8)))


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.iterdir() if p.is_file())


SEARCH_SCRIPT = r"""
import json, resource, sys, time
from oesir_cli import api
idx, out = sys.argv[1], sys.argv[2]
if len(sys.argv) > 3:  # the earlier behaviour, for a side-by-side: every list a query read stays mapped
    import oesir_cli.local_index
    oesir_cli.local_index.RESIDENT_SEGMENT_BYTES = float("inf")
queries = [l.rstrip("\n") for l in sys.stdin if l.strip()]
t0 = time.perf_counter(); s = api.open_searcher(idx); opened = time.perf_counter() - t0
def status(key):
    return int(open("/proc/self/status").read().split(key + ":")[1].split()[0]) * 1024
times, first = [], None
with open(out, "w") as fh:
    for q in queries:
        t = time.perf_counter(); r = api.search_file(s, q, top=100); times.append(time.perf_counter() - t)
        fh.write(json.dumps(r.as_dict()) + "\n")
        first = first or status("VmHWM")
print(json.dumps({"open_s": opened, "times": times, "peak_rss": status("VmHWM"), "peak_rss_first_query": first,
                  "rss_anon": status("RssAnon"), "rss_file": status("RssFile")}))
"""


def search_sets(idx: Path, data: Path, per_set: int, work: Path, tag: str, keep_mapped: bool = False) -> dict:
    out: dict = {}
    queries = {s: sorted((data / s / "queries").iterdir())[:per_set] for s in SETS}
    files = [str(q) for s in SETS for q in queries[s]]
    res = work / f"search-{tag}.jsonl"
    command = [sys.executable, "-c", SEARCH_SCRIPT, str(idx), str(res)] + (["keep-mapped"] if keep_mapped else [])
    proc = subprocess.run(command, input="\n".join(files),
                          capture_output=True, text=True, check=True)  # fmt: skip
    stats = json.loads(proc.stdout.strip().splitlines()[-1])
    times = np.array(stats["times"])
    out.update(open_s=stats["open_s"], p50=float(np.median(times)), p90=float(np.quantile(times, 0.9)))
    out.update({k: stats[k] for k in ("peak_rss", "peak_rss_first_query", "rss_anon", "rss_file")})
    lines = res.read_text().splitlines()
    at = 0
    for s in SETS:
        chunk = lines[at : at + len(queries[s])]
        at += len(queries[s])
        names = {q.name for q in queries[s]}
        truth = work / f"truth-{s}.jsonl"
        truth.write_text(
            "".join(t + "\n" for t in (data / s / "truth.jsonl").read_text().splitlines() if json.loads(t)["query"] in names)
        )
        part = work / f"search-{tag}-{s}.jsonl"
        part.write_text("\n".join(chunk) + "\n")
        scorer = [sys.executable, str(data.parent / "bench/score.py"), "retrieval", str(truth), str(part)]
        score = json.loads(subprocess.run(scorer, capture_output=True, text=True, check=True).stdout)
        r = score.get("composite") or score["splice"]
        out[s] = {"host@1": r["host@1"], "donor@10": r["donor@10"]}
    return out


def add_real(idx: Path, data: Path, work: Path, batch: int) -> float:
    """Seconds per photo of `oesir index` adding 100 real photos (the `batch`-th hundred of the training
    photos: each size adds new ones) to the index, where they stay."""
    extra = work / f"added-{batch}"
    extra.mkdir(exist_ok=True)
    for p in sorted((data / "imagenet-sample/train").iterdir())[100 * batch : 100 * (batch + 1)]:
        if not (extra / p.name).exists():
            os.symlink(p.resolve(), extra / p.name)
    t0 = time.perf_counter()
    api.index([extra], index_dir=idx, keep_missing=True)  # keep_missing: the simulated photos have no files
    return (time.perf_counter() - t0) / 100


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--index", type=Path, required=True, help="an oesir index of the standard database")
    ap.add_argument("--data", type=Path, default=Path("../shared/data"))
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--sizes", default="10000,100000,1000000")
    ap.add_argument("--views", type=int, default=8, help="augmented views per training photo")
    ap.add_argument("--per-set", type=int, default=50, help="queries per dev set")
    ap.add_argument("--skip-base", action="store_true", help="do not search the standard database itself (a second run)")
    ap.add_argument(
        "--keep-mapped-too",
        action="store_true",
        help="search each size a second time with every list a query read kept mapped (the earlier behaviour)",
    )
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    idx = args.work / "idx"
    if not idx.exists():
        shutil.copytree(args.index, idx)
        api.transcode(idx, "pq")
    pool = build_pool(args.data, args.views, args.work)
    rows = []
    if not args.skip_base:
        base = {"photos": api.info(idx)["photos"], "bytes_per_photo": folder_bytes(idx) / api.info(idx)["photos"]}
        base.update(search_sets(idx, args.data, args.per_set, args.work, "base"))
        rows.append(base)
        print(json.dumps(base), flush=True)
    for n in (int(s) for s in args.sizes.split(",")):
        batch = min(4, int(np.log10(n)) - 3)  # 10^4 -> the first hundred training photos, 10^5 the second, ...
        row = {"photos": n, **grow(idx, pool, n, seed=n)}
        row["bytes_per_photo"] = folder_bytes(idx) / n
        row["index_s_per_photo"] = add_real(idx, args.data, args.work, batch)
        row.update(search_sets(idx, args.data, args.per_set, args.work, str(n)))
        rows.append(row)
        print(json.dumps(row), flush=True)
        if args.keep_mapped_too:
            kept = {"photos": n, "kept_mapped": True, "bytes_per_photo": row["bytes_per_photo"]}
            kept.update(search_sets(idx, args.data, args.per_set, args.work, f"{n}-kept", keep_mapped=True))
            rows.append(kept)
            print(json.dumps(kept), flush=True)
    print()
    print("| photos | bytes/photo | index s/photo (100 real added) | open s | p50 s/query | p90 | peak RSS MB "
          "(first query / all) | RSS anon / file MB at the end | "
          + " | ".join(f"{s} host@1 / donor@10" for s in SETS) + " |")  # fmt: skip
    print("| --- " * (8 + len(SETS)) + "|")
    for r in rows:
        label = f"{r['photos']:,}" + (" (lists kept mapped)" if r.get("kept_mapped") else "")
        cells = [label, f"{r['bytes_per_photo']:,.0f}", f"{r.get('index_s_per_photo', float('nan')):.3f}",
                 f"{r['open_s']:.1f}", f"{r['p50']:.2f}", f"{r['p90']:.2f}",
                 f"{r['peak_rss_first_query'] / 1e6:.0f} / {r['peak_rss'] / 1e6:.0f}",
                 f"{r['rss_anon'] / 1e6:.0f} / {r['rss_file'] / 1e6:.0f}"]  # fmt: skip
        cells += [f"{r[s]['host@1']:.0f} / {r[s]['donor@10']:.0f}" for s in SETS]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
