"""Retrieval benchmark (the paper's Table 3 on the dev sets).

    python bench/retrieval.py --data ../shared/data --work /tmp/oesir-bench-ret

Indexes the standard database (casia-sir/db + imagenet-sample/distractors)
with `oesir_cli.api.index`, searches every dev query set in each ranking mode,
plus global-descriptor baselines computed from the same teacher (MAC, SPoC,
GeM), scores with ../shared/bench/score.py and prints one markdown table.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from oesir_cli import api
from oesir_cli.imageio import load_rgb
from oesir_cli.teacher import Teacher

SETS = ("casia-sir", "casia-wild", "small-splice")


def score(score_py: Path, truth: Path, results: Path) -> dict:
    res = subprocess.run(
        [sys.executable, str(score_py), "retrieval", str(truth), str(results)], capture_output=True, text=True, check=True
    )
    return json.loads(res.stdout)


def global_descriptor(fmap: np.ndarray, kind: str) -> np.ndarray:
    """MAC / SPoC / GeM (p=3) pooling of a (C, H, W) map, L2-normalised."""
    x = np.maximum(fmap.reshape(fmap.shape[0], -1), 0)
    if kind == "MAC":
        v = x.max(1)
    elif kind == "SPoC":
        v = x.mean(1)
    else:
        v = np.cbrt((x**3).mean(1))
    return v / max(np.linalg.norm(v), 1e-12)


def global_baselines(db_files: list[Path], queries: dict[str, list[Path]], out: Path) -> dict[str, float]:
    teacher = Teacher()
    kinds = ("MAC", "SPoC", "GeM")
    t0 = time.perf_counter()
    db = {k: [] for k in kinds}
    for f in db_files:
        m = teacher.features(load_rgb(f)).s32
        for k in kinds:
            db[k].append(global_descriptor(m, k))
    per_photo = (time.perf_counter() - t0) / len(db_files)
    mats = {k: np.stack(v) for k, v in db.items()}
    for name, files in queries.items():
        fh = {k: open(out / f"{k}-{name}.jsonl", "w") for k in kinds}
        for q in files:
            m = teacher.features(load_rgb(q)).s32
            for k in kinds:
                order = np.argsort(-(mats[k] @ global_descriptor(m, k)))[:100]
                fh[k].write(json.dumps({"query": str(q), "matches": [{"image": str(db_files[i])} for i in order]}) + "\n")
        for f in fh.values():
            f.close()
    return {k: per_photo for k in kinds}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path("../shared/data"))
    ap.add_argument("--work", type=Path, default=Path("/tmp/oesir-bench-ret"))
    ap.add_argument("--modes", default="fused,objects,local")
    ap.add_argument("--baselines", action="store_true", help="also run MAC/SPoC/GeM")
    ap.add_argument(
        "--comparisons",
        action="store_true",
        help="also run the comparison rows of bench/baselines.py (R-MAC, OE-HoG, OE-detector, SIFT, PDQ, k sweep) from one pass",
    )
    ap.add_argument("--systems", default="", help="with --comparisons: only these rows (comma-separated, e.g. 'SIFT tuned')")
    args = ap.parse_args()
    data = args.data.resolve()
    score_py = data.parent / "bench" / "score.py"
    args.work.mkdir(parents=True, exist_ok=True)
    db_dirs = [data / "casia-sir" / "db", data / "imagenet-sample" / "distractors"]
    index_dir = args.work / "index"
    t0 = time.perf_counter()
    summary = api.index(db_dirs, index_dir=index_dir)
    index_secs = time.perf_counter() - t0
    n_db = summary.photos
    print(f"index: {summary.line()} ({index_secs / max(n_db, 1):.3f} s/photo this run)", file=sys.stderr)
    size = api.info(index_dir)["bytes_per_photo"]
    queries = {s: sorted((data / s / "queries").iterdir()) for s in SETS}
    rows = []
    searcher = api.open_searcher(index_dir)
    for mode in [m for m in args.modes.split(",") if m]:
        cols = {}
        for s in SETS:
            path = args.work / f"{mode}-{s}.jsonl"
            t1 = time.perf_counter()
            with open(path, "w") as fh:
                for q in queries[s]:
                    ms = api.search_path(searcher, q, top=100, mode=mode)
                    fh.write(json.dumps({"query": str(q), "matches": [m.as_dict() for m in ms]}) + "\n")
            secs = (time.perf_counter() - t1) / len(queries[s])
            cols[s] = (score(score_py, data / s / "truth.jsonl", path), secs)
        rows.append((f"oesir --mode {mode}", cols, index_secs / max(n_db, 1), size))
        print(_row(*rows[-1]), flush=True)
    if args.baselines:
        db_files = sorted(p for d in db_dirs for p in d.iterdir())
        per_photo = global_baselines(db_files, queries, args.work)
        for k, secs in per_photo.items():
            cols = {s: (score(score_py, data / s / "truth.jsonl", args.work / f"{k}-{s}.jsonl"), None) for s in SETS}
            rows.append((k, cols, secs, None))
            print(_row(*rows[-1]), flush=True)
    if args.comparisons:
        import baselines  # bench/baselines.py, next to this file

        db_files = sorted(p for d in db_dirs for p in d.iterdir())
        train = sorted((data / "imagenet-sample" / "train").iterdir())
        only = [x.strip() for x in args.systems.split(",") if x.strip()] or None
        per_photo = baselines.run(db_files, queries, train, args.work, lambda m: print(m, file=sys.stderr, flush=True), only)
        for k, secs in per_photo.items():
            name = baselines.slug(k)
            cols = {s: (score(score_py, data / s / "truth.jsonl", args.work / f"{name}-{s}.jsonl"), None) for s in SETS}
            rows.append((k, cols, secs, None))
            print(_row(*rows[-1]), flush=True)
    print()
    print(_header())
    for r in rows:
        print(_row(*r))


def _header() -> str:
    cells = ["system"]
    for s in SETS:
        cells += [f"{s} host@1", "host@10", "donor@1", "donor@10", "both@10", "copy-move host@1", "s/query"]
    cells += ["index s/photo", "index bytes/photo"]
    return "| " + " | ".join(cells) + " |\n|" + " --- |" * len(cells)


def _row(name: str, cols: dict, index_secs: float, size) -> str:
    cells = [name]
    for s in SETS:
        r, secs = cols[s]
        sp, cm = r["splice"], r.get("copy-move")
        cells += [
            sp["host@1"],
            sp["host@10"],
            sp["donor@1"],
            sp["donor@10"],
            sp["both@10"],
            cm["host@1"] if cm else "–",
            f"{secs:.3f}" if secs else "–",
        ]
    cells += [f"{index_secs:.3f}", str(size) if size else "–"]
    return "| " + " | ".join(str(c) for c in cells) + " |"


if __name__ == "__main__":
    main()
