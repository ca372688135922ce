"""Roles and verdicts benchmark: does `oesir search` label hosts, donors and "no source" correctly?

    python bench/verdicts.py --data ../shared/data --index /tmp/oesir-check/idx --copies /tmp/oesir-copies

The index must hold the standard database (casia-sir/db + imagenet-sample/distractors).
Query sets: the dev splice sets (truth.jsonl: host, donor(s)), photos that are not in
the collection (imagenet-sample/train, never indexed), and copies of stored photos
(re-encoded, resized or cropped; made here into --copies with a fixed seed if missing).
Prints one table row per set: verdicts, how often the true host is ranked first and
labelled host, how often a true donor in the top 10 is labelled donor, how many other
photos are labelled donor, and copy-moves that got "none". Roles and verdicts come
from the code (`Searcher.search`), not from a re-derivation.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections import Counter
from pathlib import Path

import cv2

from oesir_cli import api
from oesir_cli.choices import Role
from oesir_cli.imageio import load_rgb

COPIES = 150
SEED = 17


def make_copies(data: Path, out: Path) -> list[dict]:
    """COPIES stored photos, each re-encoded (JPEG 50-85), resized (0.5-0.9) or cropped (85-95%) + re-encoded."""
    truth = out / "truth.jsonl"
    if truth.exists():
        return [json.loads(line) for line in truth.read_text().splitlines()]
    out.mkdir(parents=True, exist_ok=True)
    db = sorted(p for d in ("casia-sir/db", "imagenet-sample/distractors") for p in (data / d).iterdir())
    rng = random.Random(SEED)
    rows = []
    for i, p in enumerate(rng.sample(db, COPIES)):
        img = cv2.imread(str(p))
        h, w = img.shape[:2]
        q = rng.randint(50, 90)
        if i % 3 == 1:
            s = rng.uniform(0.5, 0.9)
            img = cv2.resize(img, (int(w * s), int(h * s)), interpolation=cv2.INTER_AREA)
        elif i % 3 == 2:
            c = rng.uniform(0.85, 0.95)
            cw, ch = int(w * c), int(h * c)
            x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
            img = img[y : y + ch, x : x + cw]
        name = f"copy_{i:03d}.jpg"
        cv2.imwrite(str(out / name), img, [cv2.IMWRITE_JPEG_QUALITY, q])
        rows.append({"kind": "copy", "query": name, "host": p.name})
    truth.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows


SPLICE_SETS = ("casia-sir", "casia-wild", "small-splice", "composites")


def queries(data: Path, copies: Path, sets: set[str]) -> list[tuple[str, Path, dict]]:
    out = []
    for name in (s for s in SPLICE_SETS if s in sets):
        for line in (data / name / "truth.jsonl").read_text().splitlines():
            t = json.loads(line)
            out.append((name, data / name / "queries" / t["query"], t))
    if "copies" in sets:
        out += [("copies", copies / t["query"], t) for t in make_copies(data, copies)]
    if "outside" in sets:
        train = sorted((data / "imagenet-sample" / "train").iterdir())
        out += [("not in collection", p, {"kind": "unrelated"}) for p in train]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--index", type=Path, required=True)
    ap.add_argument("--copies", type=Path, default=Path("/tmp/oesir-copies"))
    ap.add_argument("--out", type=Path, help="also write every result (JSONL)")
    every = (*SPLICE_SETS, "copies", "outside")
    ap.add_argument("--sets", default=",".join(every), help=f"comma-separated, of: {', '.join(every)} (default: all)")
    args = ap.parse_args()
    unknown = set(args.sets.split(",")) - set(every)
    if unknown:
        ap.error(f"unknown set(s) {', '.join(sorted(unknown))}; one of {', '.join(every)}")
    searcher = api.open_searcher(args.index)
    stats: dict[str, Counter] = {}
    sink = args.out.open("w") if args.out else None
    t0 = time.time()
    for name, path, t in queries(args.data, args.copies, set(args.sets.split(","))):
        result = searcher.search(load_rgb(path), top=10)
        if sink:
            sink.write(json.dumps({"set": name, "truth": t, **result.as_dict()}) + "\n")
        st = stats.setdefault(name, Counter())
        st["queries"] += 1
        st[f"verdict {result.verdict.value}"] += 1
        names = [Path(m.image).name for m in result.matches]
        host = t.get("host")
        if t.get("kind") in ("splice", "composite", "copy"):
            st["host queries"] += 1
            st["host labelled"] += bool(names) and names[0] == host and result.matches[0].role is Role.HOST
        if t.get("kind") == "copy-move":
            st["copy-moves"] += 1
            st["copy-moves none"] += result.verdict.value == "none"
        donors = set(t.get("donors") or ([t["donor"]] if t.get("donor") and not t.get("donor_absent") else []))
        for n, m in zip(names, result.matches):
            if n in donors:
                st["donors in top 10"] += 1
                st["donors labelled"] += m.role is Role.DONOR
            elif m.role is Role.DONOR:
                st["other photos labelled donor"] += 1
    print(f"{sum(s['queries'] for s in stats.values())} queries, {time.time() - t0:.0f} s", file=sys.stderr)
    print("| set | queries | sources / copy / none | host labelled | top-10 donors labelled | other photos labelled donor |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, st in stats.items():
        pct = lambda a, b, st=st: f"{100 * st[a] / st[b]:.1f}% ({st[a]}/{st[b]})" if st[b] else "–"  # noqa: E731
        verdicts = f"{st['verdict sources']} / {st['verdict copy']} / {st['verdict none']}"
        cm = f"; copy-moves 'none': {st['copy-moves none']}/{st['copy-moves']}" if st["copy-moves"] else ""
        donors = pct("donors labelled", "donors in top 10")
        print(
            f"| {name} | {st['queries']} | {verdicts}{cm} | {pct('host labelled', 'host queries')} | {donors} | "
            f"{st['other photos labelled donor']} |"
        )


if __name__ == "__main__":
    main()
