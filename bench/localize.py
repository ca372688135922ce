"""Localization benchmark: oesir localize against the ground-truth host or donor.

    python bench/localize.py --data ../shared/data --out /tmp/oesir-bench-loc [--sets casia-wild:host,casia-sir:donor]

Writes masks and heatmaps per query, scores them with ../shared/bench/score.py
localization and prints one table (F1/MCC of the written mask at 128, of the
heatmap at the best single threshold, seconds per pair). Baselines: plain
pixel difference without alignment, and feature difference only (Eq. 9).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np

from oesir_cli.imageio import load_rgb
from oesir_cli.localize import AlignmentError, localize
from oesir_cli.pixels import colour_difference, feature_difference
from oesir_cli.teacher import Teacher


def pairs(data: Path, name: str, role: str) -> list[tuple[Path, Path, str, dict]]:
    dbs = [data / "casia-sir" / "db", data / "imagenet-sample" / "distractors"]
    out = []
    for line in (data / name / "truth.jsonl").read_text().splitlines():
        t = json.loads(line)
        if not t.get("mask") or not t.get(role):
            continue
        orig = next(b / t[role] for b in dbs if (b / t[role]).exists())
        out.append((data / name / "queries" / t["query"], orig, Path(t["query"]).stem, t))
    return out


def run(method: str, items, out: Path, teacher: Teacher) -> float:
    (out / "mask").mkdir(parents=True, exist_ok=True)
    (out / "heat").mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    for q, o, stem, _ in items:
        qi, oi = load_rgb(q), load_rgb(o)
        if method == "oesir":
            try:
                r = localize(qi, oi, teacher=teacher)
                mask, heat = r.mask, r.heatmap
            except AlignmentError:
                continue
        else:
            oi = cv2.resize(oi, (qi.shape[1], qi.shape[0]))
            if method == "pixel-diff":
                d = np.clip(colour_difference(qi, oi) / 50.0, 0, 1)
            else:  # feature difference only (Eq. 9), no alignment
                d = np.clip(
                    feature_difference(teacher.features(qi).s16, teacher.features(oi).s16, (qi.shape[1], qi.shape[0])), 0, 1
                )
            heat = (d * 255).astype(np.uint8)
            mask = ((d >= 0.5) * 255).astype(np.uint8)
        cv2.imwrite(str(out / "mask" / f"{stem}.png"), mask)
        cv2.imwrite(str(out / "heat" / f"{stem}.png"), heat)
    return (time.perf_counter() - t0) / max(len(items), 1)


def score(score_py: Path, items, pred: Path, work: Path) -> dict:
    truth = work / "truth"
    truth.mkdir(parents=True, exist_ok=True)
    masks = truth / "masks"
    if not masks.exists():
        masks.symlink_to(items[0][0].parent.parent / "masks")
    (truth / "truth.jsonl").write_text("".join(json.dumps(t) + "\n" for *_, t in items))
    res = subprocess.run(
        [sys.executable, str(score_py), "localization", str(truth / "truth.jsonl"), str(pred)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(res.stdout)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path("../shared/data"))
    ap.add_argument("--out", type=Path, default=Path("/tmp/oesir-bench-loc"))
    ap.add_argument("--sets", default="casia-wild:host,casia-sir:donor,casia-sir:host,small-splice:host")
    ap.add_argument("--methods", default="oesir,pixel-diff,feature-diff")
    ap.add_argument("--limit", type=int, default=0)
    args = ap.parse_args()
    args.data = args.data.resolve()
    score_py = args.data.parent / "bench" / "score.py"
    teacher = Teacher()
    rows = []
    for spec in args.sets.split(","):
        name, role = spec.split(":")
        items = pairs(args.data, name, role)
        if args.limit:
            items = items[: args.limit]
        for method in args.methods.split(","):
            work = args.out / f"{name}-{role}-{method}"
            secs = run(method, items, work, teacher)
            m = score(score_py, items, work / "mask", work)
            h = score(score_py, items, work / "heat", work)
            rows.append(
                (
                    f"{name} vs {role}",
                    method,
                    len(items),
                    m["F1@128"],
                    m["MCC@128"],
                    h["F1@best"],
                    h["best_threshold"],
                    secs,
                    m["missing"],
                )
            )
            print(_fmt(rows[-1]), flush=True)
    print("\n| set | method | pairs | mask F1@128 | mask MCC@128 | heatmap F1@best | s/pair | no output |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(_fmt(r))


def _fmt(r: tuple) -> str:
    return f"| {r[0]} | {r[1]} | {r[2]} | {r[3]:.3f} | {r[4]:.3f} | {r[5]:.3f} @ {r[6]} | {r[7]:.2f} | {r[8]} |"


if __name__ == "__main__":
    main()
