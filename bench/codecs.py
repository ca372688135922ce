"""What each codec costs in accuracy and size on the real benchmark (issue #7).

    python bench/codecs.py --index /tmp/oesir-obj/f32 --data ../shared/data --work /tmp/oesir-codecs

Copies a float32 index of the standard database (`oesir index ... --codec float32`,
with or without `--no-local`), re-encodes each copy in place with `api.transcode`
(the same codes a fresh `--codec` index stores: tests/test_codec.py checks that),
searches the dev query sets through the API and scores them with
`../shared/bench/score.py`. Prints host@1 / donor@10 per set, bytes per object
of the whole index folder (`oesir info`), and search seconds per query.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from oesir_cli import api
from oesir_cli.codec import CODECS


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--index", type=Path, required=True, help="float32 index of the standard database")
    ap.add_argument("--data", type=Path, default=Path("../shared/data"))
    ap.add_argument("--work", type=Path, default=Path("/tmp/oesir-codecs"))
    ap.add_argument("--sets", default="casia-sir,casia-wild,small-splice")
    ap.add_argument("--codecs", default=",".join(CODECS))
    ap.add_argument("--mode", default="fused", help="search mode (an index without local features searches objects)")
    args = ap.parse_args()
    data = args.data.resolve()
    args.work.mkdir(parents=True, exist_ok=True)
    rows = []
    for codec in args.codecs.split(","):
        idx = args.work / f"{args.index.name}-{codec}"
        if not idx.exists():
            shutil.copytree(args.index, idx, ignore=shutil.ignore_patterns("lock"))
            api.transcode(idx, codec)
        info = api.info(idx)
        searcher = api.open_searcher(idx)
        row = {"codec": codec, "bytes_per_object": info["bytes_per_object"], "local": info["local_features"]}
        for s in args.sets.split(","):
            queries = sorted((data / s / "queries").iterdir())
            out = args.work / f"{idx.name}-{s}.jsonl"
            t0 = time.perf_counter()
            with open(out, "w") as fh:
                for q in queries:
                    matches = api.search_path(searcher, q, top=100, mode=args.mode)
                    fh.write(json.dumps({"query": str(q), "matches": [m.as_dict() for m in matches]}) + "\n")
            secs = (time.perf_counter() - t0) / len(queries)
            res = subprocess.run(
                [sys.executable, str(data.parent / "bench" / "score.py"), "retrieval", str(data / s / "truth.jsonl"), str(out)],
                capture_output=True,
                text=True,
                check=True,
            )
            splice = json.loads(res.stdout)["splice"]
            row[s] = (splice["host@1"], splice["donor@10"], secs)
            print(json.dumps(row), file=sys.stderr, flush=True)
        rows.append(row)
    sets = args.sets.split(",")
    print("| codec | local features | index bytes/object | " + " | ".join(f"{s} host@1 / donor@10, s/query" for s in sets) + " |")
    print("|" + " --- |" * (3 + len(sets)))
    for r in rows:
        cells = " | ".join(f"{r[s][0]} / {r[s][1]}, {r[s][2]:.3f}" for s in sets)
        print(f"| {r['codec']} | {'yes' if r['local'] else 'no'} | {r['bytes_per_object']:,} | {cells} |")


if __name__ == "__main__":
    main()
