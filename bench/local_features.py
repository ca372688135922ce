"""Old and new local-feature stage side by side (issue #16): size, indexing time, cold start, memory, speed.

    python bench/local_features.py --old /work/base/oesir-old --new oesir --work /work/wk/bench \\
        --data ../shared/data

`--old` and `--new` are commands that run an `oesir` (e.g. a script that runs
the previous commit's code); both are measured in this one run, one after the
other, on the same machine and photos:

* `oesir index` of the standard database (casia-sir/db + imagenet-sample/distractors)
  from empty: wall seconds and photos/s;
* adding 100 photos (imagenet-sample/train, never part of the database) to a copy
  of that index: wall seconds;
* bytes per photo of the whole index folder (after the add, over 1,385 photos,
  and before it, over the standard 1,285);
* a cold `oesir search one.jpg --json` on the standard index: wall seconds and peak
  RSS of the process (`wait4`), median of `--cold` runs over different queries;
* s/query of `oesir search - --json` over `--queries` casia-sir queries (one process).

Accuracy is `check.sh retrieval` on the same indexes (OESIR_CHECK_DIR=WORK/NAME,
which this script prepares with `index.done`), run after this script.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

ADDED_PHOTOS = 100


def run(cmd: list[str], stdin: str | None = None) -> tuple[float, str]:
    """Wall seconds and stdout of one command."""
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, input=stdin, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed with exit {proc.returncode}")
    return time.perf_counter() - t0, proc.stdout


def peak_rss(cmd: list[str]) -> tuple[float, int]:
    """Wall seconds and peak RSS (bytes) of one command, its own process only (`wait4`)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    if status:
        raise SystemExit(f"{' '.join(cmd)} failed ({status})")
    return time.perf_counter() - t0, usage.ru_maxrss * 1024


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def measure(name: str, oesir: list[str], work: Path, db: list[Path], extra: Path, queries: list[Path], cold: int) -> dict:
    out: dict = {"name": name}
    base = work / name
    shutil.rmtree(base, ignore_errors=True)
    base.mkdir(parents=True)
    idx = base / "idx"
    wall, _ = run([*oesir, "index", *map(str, db), "--index", str(idx)])
    (base / "index.done").touch()
    photos = json.loads(run([*oesir, "info", "--json", "--index", str(idx)])[1])["photos"]
    out.update(index_s=wall, photos=photos, photos_per_s=photos / wall, bytes_per_photo=folder_bytes(idx) / photos)
    colds = [peak_rss([*oesir, "search", str(q), "--json", "--index", str(idx)]) for q in queries[:cold]]
    colds.sort()
    out.update(cold_s=colds[len(colds) // 2][0], cold_rss=sorted(r for _, r in colds)[len(colds) // 2])
    t0 = time.perf_counter()
    run([*oesir, "search", "-", "--json", "--index", str(idx)], stdin="\n".join(map(str, queries)) + "\n")
    out["s_per_query"] = (time.perf_counter() - t0) / len(queries)
    plus = base / "idx-plus"
    shutil.copytree(idx, plus)
    wall, _ = run([*oesir, "index", *map(str, db), str(extra), "--index", str(plus)])
    out.update(add_s=wall, bytes_per_photo_plus=folder_bytes(plus) / (photos + ADDED_PHOTOS))
    shutil.rmtree(plus)
    return out


HIGHER_IS_BETTER = ("photos_per_s",)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--old", required=True, help="command running the previous oesir")
    ap.add_argument("--new", default="oesir", help="command running this oesir")
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--data", type=Path, default=Path("../shared/data"))
    ap.add_argument("--queries", type=int, default=100, help="casia-sir queries timed in one process")
    ap.add_argument("--cold", type=int, default=5, help="cold single-query runs (median reported)")
    ap.add_argument("--only", choices=["old", "new"], help="measure one side only (the table then has one row)")
    args = ap.parse_args()
    db = [args.data / "casia-sir/db", args.data / "imagenet-sample/distractors"]
    extra = args.work / "added"
    if not extra.exists():
        extra.mkdir(parents=True)
        for p in sorted((args.data / "imagenet-sample/train").iterdir())[:ADDED_PHOTOS]:
            os.symlink(p.resolve(), extra / p.name)
    queries = sorted((args.data / "casia-sir/queries").iterdir())[: args.queries]
    rows = []
    for name, cmd in (("old", args.old), ("new", args.new)):
        if args.only and name != args.only:
            continue
        rows.append(measure(name, cmd.split(), args.work, db, extra, queries, args.cold))
        print(json.dumps(rows[-1]), flush=True)
    print()
    print("| | old | new | ratio |" if len(rows) == 2 else "| | " + rows[0]["name"] + " |")
    print("| --- | --- | --- | --- |" if len(rows) == 2 else "| --- | --- |")
    fields = [
        ("index of the standard database, s", "index_s", "{:.0f}"),
        ("photos/s", "photos_per_s", "{:.2f}"),
        ("add 100 photos, s", "add_s", "{:.1f}"),
        ("bytes per photo (1,285 photos)", "bytes_per_photo", "{:,.0f}"),
        ("bytes per photo (after the add)", "bytes_per_photo_plus", "{:,.0f}"),
        ("cold `oesir search one.jpg`, s", "cold_s", "{:.2f}"),
        ("peak RSS of that process, MB", "cold_rss", "{:.0f}"),
        ("s/query over a set (one process)", "s_per_query", "{:.3f}"),
    ]
    for label, key, fmt in fields:
        vals = [r[key] / (1e6 if key == "cold_rss" else 1) for r in rows]
        cells = [fmt.format(v) for v in vals]
        if len(rows) == 2:  # how many times better: less of a cost, more of a rate
            better = vals[1] / vals[0] if key in HIGHER_IS_BETTER else vals[0] / vals[1]
            cells.append(f"{better:.1f}x" if vals[0] and vals[1] else "-")
        print(f"| {label} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
