"""Composites: localize each donor's part of a multi-donor composite against that donor.

    python bench/composites.py --data ../shared/data --out /tmp/oesir-bench-composites

For every composite query and each of its donors k, `oesir localize QUERY DONOR_k` (relation
detected, as `check.sh localize` runs it) writes a mask; the masks are scored by
`../shared/bench/score.py localization` against `masks/<query>_d<k>.png`, the part pasted from
that donor. Prints one table row (mask F1/MCC at 128, heatmap F1 at the best threshold,
unaligned pairs, seconds per pair).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from oesir_cli import api
from oesir_cli.localize import AlignmentError
from oesir_cli.render import write_png


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--out", type=Path, default=Path("/tmp/oesir-bench-composites"))
    args = ap.parse_args()
    sets = args.data / "composites"
    dbs = [args.data / "casia-sir" / "db", args.data / "imagenet-sample" / "distractors"]
    masks, heats = args.out / "masks", args.out / "heat"
    masks.mkdir(parents=True, exist_ok=True)
    heats.mkdir(parents=True, exist_ok=True)
    truth_rows = []
    unaligned = pairs = 0
    t0 = time.time()
    for line in (sets / "truth.jsonl").read_text().splitlines():
        t = json.loads(line)
        for k, (donor, mask) in enumerate(zip(t["donors"], t["donor_masks"])):
            stem = f"{Path(t['query']).stem}_d{k}"
            truth_rows.append({"kind": "splice", "query": f"{stem}.jpg", "mask": mask})
            original = next(d / donor for d in dbs if (d / donor).exists())
            pairs += 1
            try:
                r = api.localize_paths(sets / "queries" / t["query"], original)
            except AlignmentError:
                unaligned += 1
                continue
            write_png(masks / f"{stem}.png", r.mask)
            write_png(heats / f"{stem}.png", r.heatmap)
    seconds = (time.time() - t0) / max(pairs, 1)
    truth = "".join(json.dumps(r) + "\n" for r in truth_rows)
    scorer = args.data.parent / "bench" / "score.py"
    scored = {}
    for name, pred in (("mask", masks), ("heat", heats)):
        # score.py reads masks from <truth dir>/masks: give it a truth dir of its own
        tdir = args.out / f"truth-{name}"
        tdir.mkdir(exist_ok=True)
        (tdir / "truth.jsonl").write_text(truth)
        (tdir / "masks").unlink(missing_ok=True)
        (tdir / "masks").symlink_to((sets / "masks").resolve())
        res = subprocess.run(
            [sys.executable, str(scorer), "localization", str(tdir / "truth.jsonl"), str(pred)],
            check=True,
            capture_output=True,
            text=True,
        )
        scored[name] = json.loads(res.stdout)
    m, h = scored["mask"], scored["heat"]
    print("| set | pairs | mask F1@128 | mask MCC@128 | heatmap F1@best | unaligned | s/pair |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    print(
        f"| composites, each donor's part vs that donor | {pairs} | {m['F1@128']} | {m['MCC@128']} | "
        f"{h['F1@best']} @ {h['best_threshold']} | {unaligned} | {seconds:.2f} |"
    )


if __name__ == "__main__":
    main()
