"""Adding photos to a large index: the object structure extended (new) against rebuilt (old), one run.

    python bench/object_structure.py --index WORK/growth/idx --old OLD_CHECKOUT --new . --data ../shared/data

`--index` is an index above 200,000 objects (so it has `objects.ivfpq` or `objects.hnsw`), e.g. the one
`bench/local_growth.py` grows; it is changed: each step adds 100 more photos of `imagenet-sample/train`
(from `--first`; `--photos`, `--per-step`), which stay. Steps, each `oesir index DIR --keep-missing` in a fresh process:
1. new code (its first add may rebuild once: a structure saved by older code has no rows digest);
2. new code again: the structure is extended;
3. old code: the structure is rebuilt, as it was on every add.
Prints wall seconds per step and per photo; every step extracts and writes 100 photos alike, so the
difference between steps is the object structure's upkeep.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

STEPS = (("new (first add: primes the rows digest)", "new"), ("new", "new"), ("old", "old"))


def run_add(code: Path, idx: Path, photos: Path) -> float:
    env = {**os.environ, "PYTHONPATH": str(code.resolve())}
    command = [sys.executable, "-c", "from oesir_cli.cli import main; main()", "index", str(photos), "--index", str(idx),
               "--keep-missing"]  # fmt: skip
    t0 = time.perf_counter()  # run from the code's folder: `python -c` puts the working directory first on sys.path
    subprocess.run(command, env=env, cwd=code.resolve(), check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--index", type=Path, required=True)
    ap.add_argument("--old", type=Path, required=True, help="a checkout of the old code")
    ap.add_argument("--new", type=Path, default=Path("."))
    ap.add_argument("--data", type=Path, default=Path("../shared/data"))
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--photos", type=Path, help="where the added photos come from (default: imagenet-sample/train)")
    ap.add_argument("--first", type=int, default=200, help="first photo of that folder to add")
    ap.add_argument("--per-step", type=int, default=100, help="photos added per step")
    args = ap.parse_args()
    train = sorted((args.photos or args.data / "imagenet-sample/train").iterdir())
    k = args.per_step
    structure = next(p for p in (args.index / "objects.ivfpq", args.index / "objects.hnsw") if p.exists())
    rows = []
    for i, (label, which) in enumerate(STEPS):
        folder = args.work / f"add-{args.first + k * i}"
        folder.mkdir(parents=True, exist_ok=True)
        for p in train[args.first + k * i : args.first + k * (i + 1)]:
            if not (folder / p.name).exists():
                os.symlink(p.resolve(), folder / p.name)
        stamp_before = json.loads(Path(str(structure) + ".json").read_text())
        secs = run_add(args.old if which == "old" else args.new, args.index, folder)
        stamp = json.loads(Path(str(structure) + ".json").read_text())
        rows.append((label, secs, k, stamp_before.get("count"), stamp.get("count"), "rows" in stamp))
        print(json.dumps(rows[-1]), flush=True)
    print(f"\n{structure.name}: adding {k} photos per step\n")
    print("| code | wall s | s/photo | structure rows before -> after | rows digest saved |")
    print("| --- | --- | --- | --- | --- |")
    for label, secs, n, before, after, digest in rows:
        print(f"| {label} | {secs:.1f} | {secs / n:.3f} | {before:,} -> {after:,} | {'yes' if digest else 'no'} |")


if __name__ == "__main__":
    main()
