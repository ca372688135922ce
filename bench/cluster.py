"""The local back end and Ray + Milvus Lite side by side (issue #19): indexing, s/query, accuracy per dev set.

    python bench/cluster.py --data ../shared/data --work /work/wk/cluster [--sets casia-sir,composites]

Both back ends index the standard database (casia-sir/db + imagenet-sample/
distractors) from empty in this one run, one after the other, with the same
`oesir` on PATH: `--index WORK/local` (photos described in this process) and
`--index milvus-lite:WORK/milvus.db --ray local` (a local Ray cluster of
`os.cpu_count()` one-thread actors; the driver writes Milvus Lite). Then every
query of each dev set is searched by one `oesir search - --json --top 100`
process per back end and scored by ../shared/bench/score.py, as check.sh does.
Prints one table; `--json FILE` keeps the numbers.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

SETS = ("casia-sir", "casia-wild", "small-splice", "composites")


def timed(cmd: list[str], stdin: str | None = None) -> tuple[float, str]:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, input=stdin, capture_output=True, text=True)
    if proc.returncode not in (0, 3):
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip().splitlines()[-1:]}")
    return time.perf_counter() - t0, proc.stdout


def score(shared: Path, truth: Path, results: Path) -> dict:
    out = subprocess.run([sys.executable, str(shared / "bench" / "score.py"), "retrieval", str(truth), str(results)],
                         capture_output=True, text=True, check=True).stdout  # fmt: skip
    r = json.loads(out)
    s = r.get("composite") or r["splice"]
    found = {"host@1": s["host@1"], "donor@10": s["donor@10"]}
    return {**found, "all-donors@10": s["all-donors@10"]} if "composite" in r else found


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True, help="../shared/data")
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--sets", default=",".join(SETS))
    ap.add_argument("--json", type=Path)
    ap.add_argument("--reuse", action="store_true", help="search the indexes WORK already holds (no indexing)")
    ap.add_argument("--only", choices=("local", "ray+milvus-lite"), help="one back end")
    ap.add_argument("--every", type=int, default=1, help="search every N-th query of each set (sorted by name)")
    ap.add_argument("--top", type=int, default=100, help="photos listed per query (check.sh: 100)")
    args = ap.parse_args()
    data = args.data.resolve()
    shared = data.parent
    db = [data / "casia-sir" / "db", data / "imagenet-sample" / "distractors"]
    photos = sum(1 for d in db for _ in d.iterdir())
    args.work.mkdir(parents=True, exist_ok=True)
    backends = {
        "local": ([f"{args.work / 'local'}"], []),
        "ray+milvus-lite": ([f"milvus-lite:{args.work / 'milvus.db'}"], ["--ray", "local"]),
    }
    if args.only:
        backends = {args.only: backends[args.only]}
    rows: dict[str, dict] = {}
    for name, (where, extra) in backends.items():
        rows[name] = {"index_s": None, "photos_per_s": None}
        if args.reuse:
            continue
        secs, _ = timed(["oesir", "index", *map(str, db), "--index", where[0], *extra])
        rows[name] = {"index_s": round(secs, 1), "photos_per_s": round(photos / secs, 2)}
        print(f"{name}: indexed {photos} photos in {secs:.1f} s", file=sys.stderr, flush=True)
    for name, (where, _) in backends.items():
        for s in args.sets.split(","):
            queries = sorted((data / s / "queries").iterdir())[:: args.every]
            truth = data / s / "truth.jsonl"
            if args.every > 1:  # score the subset against its own truth lines
                names = {q.name for q in queries}
                lines = [x for x in truth.read_text().splitlines() if x.strip() and json.loads(x)["query"] in names]
                truth = args.work / f"{s}-every{args.every}.truth.jsonl"
                truth.write_text("\n".join(lines) + "\n")
            cmd = ["oesir", "search", "-", "--json", "--top", str(args.top), "--index", where[0]]
            secs, out = timed(cmd, "\n".join(map(str, queries)))
            results = args.work / f"{name}-{s}-every{args.every}.jsonl"
            results.write_text(out)
            per_query = round(secs / len(queries), 3)
            rows[name][s] = {**score(shared, truth, results), "queries": len(queries), "s_per_query": per_query}
            print(f"{name} {s}: {rows[name][s]}", file=sys.stderr, flush=True)
    head = f"| back end | index s | photos/s | {' | '.join(f'{s} host@1 / donor@10 / s/q' for s in args.sets.split(','))} |"
    print(head)
    print("|" + " --- |" * (3 + len(args.sets.split(","))))
    for name, r in rows.items():
        cells = []
        for s in args.sets.split(","):
            m = r[s]
            extra = f" (all {m['all-donors@10']})" if "all-donors@10" in m else ""
            cells.append(f"{m['host@1']} / {m['donor@10']}{extra} / {m['s_per_query']}")
        print(f"| {name} | {r['index_s']} | {r['photos_per_s']} | {' | '.join(cells)} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
