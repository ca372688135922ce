"""The `oesir` command line: thin commands over the Python API.

stdout carries results only (tables, or JSON lines with --json); progress bars,
warnings and errors go to stderr. Exit codes: 0 success, 1 error, 2 bad usage
or input, 3 completed but some files were skipped.
"""

from __future__ import annotations

import json
import os
import sqlite3
import sys
from collections.abc import Callable
from dataclasses import replace
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.measure import Measurement
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from . import api
from .choices import Mode, ModelKind, Precision, Relation, Role, Verdict
from .engine import EngineConfig
from .errors import DiskFullError, OesirError, StoreError
from .imageio import DEFAULT_MAX_PIXELS, ImageError
from .localize import LocalizeResult
from .memory import keep_freed_memory
from .registry import WeightsError
from .search import Match, SearchResult
from .store import default_index_dir
from .workers import POOL_MIN_PHOTOS, WorkerError, check_workers

EXIT_ERROR, EXIT_USAGE, EXIT_SKIPPED = 1, 2, 3


def _examples(*lines: str) -> str:
    """An --help epilog of example command lines, shown as written (click's \\b stops re-wrapping; rich markup escaped)."""
    return "\b\nExamples:\n" + "\n".join(f"  {escape(line)}" for line in lines)


app = typer.Typer(
    name="oesir",
    help="Find the authentic photos a suspect photo was spliced from, and show where it was changed.",
    epilog=_examples(
        "oesir index ./photos",
        "oesir search suspect.jpg",
        "oesir localize suspect.jpg --auto --overlay overlay.png",
        "oesir report suspect.jpg --out case-file --pdf",
        "oesir check",
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
weights_app = typer.Typer(
    help="Model files ($OESIR_WEIGHTS or the package's weights/): verify them, learn the whitening and PQ codebook, "
    "build the single-pass graph.",
    epilog=_examples("oesir weights verify", "OESIR_WEIGHTS=/models oesir weights verify"),
    no_args_is_help=True,
)
app.add_typer(weights_app, name="weights")

out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

IndexOpt = Annotated[
    str | None,
    typer.Option(
        "--index",
        "-i",
        help="Index folder, milvus-lite:FILE.db or milvus://HOST:PORT/NAME (default: $OESIR_INDEX or ./.oesir).",
        show_default=False,
    ),
]


def _print_version(value: bool) -> None:
    if value:
        print(f"oesir {api.version()}")
        raise typer.Exit()


@app.callback()
def _global_options(
    version: Annotated[
        bool, typer.Option("--version", help="Print the version and exit.", is_eager=True, callback=_print_version)
    ] = False,
) -> None:
    """Options that come before the command (Typer needs a callback to hold them)."""


def _fail(message: str, code: int = EXIT_ERROR) -> typer.Exit:
    err.print(f"[red]oesir: error:[/red] {message}", highlight=False, markup=True)
    return typer.Exit(code)


def _choice(enum: type[Enum], flag: str) -> Callable[[object], Enum]:
    """Parser of an option whose values are `enum`'s (Typer lists them in --help).

    A bad value is the CLI's one-line usage error (exit 2), not Typer's boxed one.
    """

    def parse(value: object) -> Enum:
        try:
            return enum(value.value if isinstance(value, Enum) else value)
        except ValueError:
            raise _fail(f"unknown {flag} {value!r} ({', '.join(str(m.value) for m in enum)})", EXIT_USAGE) from None

    return parse


def _progress() -> Progress:
    return Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err,
        transient=False,
    )


def _read_paths(paths: list[str], null: bool) -> list[str]:
    """Expand `-` into paths read from stdin (newline- or NUL-separated)."""
    result: list[str] = []
    for p in paths:
        if p == "-":
            data = sys.stdin.buffer.read()
            parts = data.split(b"\0") if null else data.splitlines()
            result.extend(os.fsdecode(x) for x in parts if x.strip())
        else:
            result.append(p)
    return result


@app.command(
    epilog=_examples(
        "oesir index ./photos",
        "oesir index ./photos --index case.oesir --json",
        "find . -name '*.jpg' -print0 | oesir index - -0",
        "oesir index ./photos --codec pq --no-local   # compact",
        "oesir index ./photos --rebuild               # after a model change",
        "oesir index ./photos --workers 1             # leave the other cores free",
        "oesir index ./photos --precision float       # the float networks, slower",
        "oesir index ./photos --index milvus-lite:case.db --ray local",
        "oesir index ./photos --index milvus://HOST:19530/case --ray auto",
    )
)
def index(
    paths: Annotated[list[str], typer.Argument(help="Photos or folders (recursive); `-` reads paths from stdin.")],
    index_dir: IndexOpt = None,
    max_objects: Annotated[
        int, typer.Option("--max-objects", "-k", help="Detected objects per photo, plus the whole image.")
    ] = EngineConfig.max_objects,
    keep_missing: Annotated[bool, typer.Option("--keep-missing", help="Keep entries whose files disappeared.")] = False,
    rebuild: Annotated[bool, typer.Option("--rebuild", help="Start the index over (e.g. after a model change).")] = False,
    max_pixels: Annotated[
        int, typer.Option("--max-pixels", help="Refuse images with more pixels (decompression bombs).")
    ] = DEFAULT_MAX_PIXELS,
    null: Annotated[bool, typer.Option("-0", "--null", help="Paths on stdin are NUL-separated.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON on stdout.")] = False,
    model: Annotated[
        ModelKind | None,
        typer.Option(
            help="Embedding network of a new index: teacher (two passes) or student (single pass). Default teacher.",
            parser=_choice(ModelKind, "--model"),
        ),
    ] = None,
    precision: Annotated[
        Precision | None,
        typer.Option(
            help="Numbers the teacher path's networks compute with in a new index: int8 (default; ~2.5x faster) or "
            "float (the networks the int8 copies were made from).",
            parser=_choice(Precision, "--precision"),
        ),
    ] = None,
    codec: Annotated[
        str | None,
        typer.Option(
            help="How embeddings are stored: float32, float16 (default for a new index), or pq (32 bytes per object, "
            "asymmetric distances). On an existing index a smaller codec re-encodes it in place."
        ),
    ] = None,
    local: Annotated[
        bool | None,
        typer.Option(
            "--local/--no-local",
            help="Store RootSIFT local features (default for a new index). --no-local: objects only, about 1/1000 the size.",
            show_default=False,
        ),
    ] = None,
    ray: Annotated[
        str | None,
        typer.Option(
            "--ray",
            help="Describe photos on Ray: `local` starts a cluster on this machine for the run; `auto`, HOST:PORT or "
            "ray://HOST:10001 joins one (needs oesir[cluster]; every node must see the photos at the same paths).",
        ),
    ] = None,
    milvus_index: Annotated[
        str | None,
        typer.Option(
            "--milvus-index",
            help="Vector index of a new Milvus index: HNSW (default), FLAT, IVF_FLAT, IVF_SQ8, or IVF_PQ (servers only).",
        ),
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option(
            "--workers",
            help="Processes describing photos (default: one per core; 1: in this process). Jobs under "
            f"{POOL_MIN_PHOTOS} photos always run in this process.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Index photos: detect objects, embed them, store them with local features.

    Incremental: unchanged files are skipped, changed ones re-embedded, vanished
    ones dropped. Ctrl-C or a crash keeps every batch already committed. The
    index is a folder (the default), or Milvus (--index milvus-lite:FILE.db or
    milvus://HOST:PORT/NAME); with --ray the photos are described by a pool of
    Ray actors and this process writes the index.
    """
    paths = _read_paths(paths, null)
    if not paths:
        raise _fail("no paths given", EXIT_USAGE)
    try:
        check_workers(workers, ray)
        EngineConfig.new(model or ModelKind.TEACHER, precision)
    except (WorkerError, ValueError) as exc:
        raise _fail(str(exc), EXIT_USAGE) from None
    try:
        if not api.parse_location(index_dir).is_milvus:
            api.index_location(index_dir)  # told before a progress bar starts
        with _progress() as bar:
            task = bar.add_task("indexing", total=None, rate="")

            def progress(i: int, n: int, path: str) -> None:
                elapsed = bar.tasks[task].elapsed or 0.0
                bar.update(task, completed=i, total=n, rate=f"{i / elapsed:.1f}/s" if elapsed > 0 and i else "")

            def warn(path: str, message: str) -> None:
                bar.console.print(f"[yellow]oesir: skipped[/yellow] {path}: {message}", highlight=False, markup=True)

            summary = api.index(
                paths,
                index_dir=index_dir,
                max_objects=max_objects,
                keep_missing=keep_missing,
                rebuild=rebuild,
                max_pixels=max_pixels,
                model=model,
                precision=precision,
                codec=codec,
                local_features=local,
                progress=progress,
                on_error=warn,
                ray=ray,
                milvus_index=milvus_index,
                workers=workers,
            )
    except KeyboardInterrupt:
        raise _fail("interrupted; every batch committed before the interrupt is kept", 130) from None
    except (StoreError, WeightsError, OSError, sqlite3.Error, OesirError) as exc:
        raise _fail(_index_error(exc)) from None
    if as_json:
        print(json.dumps(summary.as_dict()))
    err.print(summary.line(), highlight=False)
    if summary.failed:
        raise typer.Exit(EXIT_SKIPPED)


@app.command(
    epilog=_examples(
        "oesir search suspect.jpg",
        "oesir search suspects/ --top 5         # every photo under the folder",
        "oesir search suspect.jpg --json | jq '.matches[0]'",
        "find . -name '*.jpg' | oesir search - --json --top 100",
        "oesir search suspect.jpg --mode objects",
    )
)
def search(
    queries: Annotated[
        list[str], typer.Argument(help="Query photos or folders (every photo under it, sorted); `-` reads paths from stdin.")
    ],
    index_dir: IndexOpt = None,
    top: Annotated[int, typer.Option("--top", "-n", help="How many photos to list per query.")] = 10,
    mode: Annotated[
        Mode,
        typer.Option(help="Ranking: fused (default), objects (the paper's Eq. 7 alone), local.", parser=_choice(Mode, "--mode")),
    ] = Mode.FUSED,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per query per line.")] = False,
    null: Annotated[bool, typer.Option("-0", "--null", help="Paths on stdin are NUL-separated.")] = False,
) -> None:
    """Rank indexed photos as sources (host or donor) of each query photo."""
    queries = _read_paths(queries, null)
    if not queries:
        raise _fail("no query given", EXIT_USAGE)
    if top < 1:
        raise _fail(f"--top must be at least 1 (got {top})", EXIT_USAGE)
    try:
        searcher = api.open_searcher(index_dir)
    except (StoreError, WeightsError, OSError, sqlite3.Error) as exc:
        raise _fail(_index_error(exc)) from None
    unreadable: list[tuple[str, str]] = []
    queries = api.query_photos(queries, unreadable)
    for q, why in unreadable:
        err.print(f"[yellow]oesir: skipped query[/yellow] {escape(q)}: {escape(why)}", highlight=False, markup=True)
        if as_json:
            print(json.dumps({"query": q, "error": why, "matches": []}), flush=True)
    failed, total = len(unreadable), len(queries) + len(unreadable)
    meta = api.provenance(searcher)
    for q in queries:
        try:
            result = api.search_file(searcher, q, top=top, mode=mode)
        except ImageError as exc:
            failed += 1
            err.print(f"[yellow]oesir: skipped query[/yellow] {exc}", highlight=False, markup=True)
            if as_json:
                print(json.dumps({"query": q, "error": str(exc), "matches": []}), flush=True)
            continue
        if as_json:
            print(json.dumps({**result.as_dict(), **meta}), flush=True)
        else:
            _print_matches(q, result.matches, _verdict_line(result))
    if failed:
        raise typer.Exit(EXIT_SKIPPED if failed < total else EXIT_USAGE)


def _verdict_line(result: SearchResult) -> str:
    """One sentence for the table's title: what the evidence supports."""
    if result.verdict is None:
        return "ranking only (roles and a verdict come from the default fused mode)"
    host_match = next((m for m in result.matches if m.role is Role.HOST), None)
    host = host_match.image if host_match else None
    donors = sum(m.role is Role.DONOR for m in result.matches)
    if result.verdict is Verdict.COPY:
        return f"copy of {host} (no local change found)"
    if result.verdict is Verdict.NONE:
        return "no source in the collection (the rows below are the nearest photos, not findings)"
    parts = ([f"host {host}"] if host else []) + ([f"{donors} donor{'s' * (donors != 1)}"] if donors else [])
    if host_match and host_match.evidence.get("moved_region"):
        parts.append("a part of the host copied and moved within it (copy-move)")
    return "sources found: " + ", ".join(parts)


def _print_matches(query: str, matches: list[Match], verdict: str) -> None:
    """The results table. File names are never broken (an investigator copies them): only the box column wraps,
    and when even that does not make the table fit the terminal, the table is printed wider, one line per row."""
    table = Table(title=f"{escape(query)}: {escape(verdict)}", title_justify="left", show_lines=False)
    longest = max((len(m.image) for m in matches), default=0)
    for col, just in (
        ("rank", "right"),
        ("role", "left"),
        ("photo", "left"),
        ("score", "right"),
        ("votes", "right"),
        ("distance", "right"),
        ("query box → db box", "left"),
    ):
        wraps = col == "query box → db box"
        table.add_column(col, justify=just, no_wrap=not wraps, min_width=longest if col == "photo" else None)  # type: ignore[arg-type]
    for r, m in enumerate(matches, 1):
        qb = ",".join(f"{v:.0f}" for v in m.query_box)
        db = ",".join(f"{v:.0f}" for v in m.db_box)
        role = m.role.value if m.role is not Role.CANDIDATE else "[dim]candidate[/dim]"
        table.add_row(str(r), role, Text(m.image), f"{m.score:.4f}", str(m.votes), f"{m.distance:.3f}", f"[{qb}] → [{db}]")
    width = Measurement.get(out, out.options.update_width(1 << 20), table)
    (out if width.minimum <= out.width else Console(width=width.maximum, soft_wrap=True)).print(table)


@app.command(
    epilog=_examples(
        "oesir localize suspect.jpg original.jpg --overlay overlay.png",
        "oesir localize suspect.jpg original.jpg --out mask.png --heatmap heat.png",
        "oesir localize suspect.jpg donor.jpg --relation donor --json",
        "oesir localize suspect.jpg --auto --overlay overlay.png  # -host, -donor",
    )
)
def localize(
    query: Annotated[Path, typer.Argument(help="The suspect photo.")],
    original: Annotated[Path | None, typer.Argument(help="An authentic photo it was made from (host or donor).")] = None,
    out_mask: Annotated[Path | None, typer.Option("--out", "-o", help="Write the binary mask PNG (255 = manipulated).")] = None,
    heatmap: Annotated[Path | None, typer.Option("--heatmap", help="Write the 0..255 score map PNG.")] = None,
    overlay: Annotated[
        Path | None, typer.Option("--overlay", help="Write the query with the region tinted and outlined.")
    ] = None,
    threshold: Annotated[float, typer.Option(help="Score (0..1) above which a pixel is manipulated.")] = 0.5,
    relation: Annotated[
        Relation, typer.Option(help="auto, host or donor.", parser=_choice(Relation, "--relation"))
    ] = Relation.AUTO,
    auto: Annotated[
        bool, typer.Option("--auto", help="No ORIGINAL: search the index, localize against its host and every donor.")
    ] = False,
    index_dir: IndexOpt = None,
    object_fallback: Annotated[
        bool, typer.Option("--object-fallback", help="When keypoints fail, align by the best object pair (Eq. 8); may be wrong.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the evidence as JSON (one line per original).")] = False,
    allow_unverified: Annotated[
        bool,
        typer.Option("--allow-unverified", help="Exit 0 even when an alignment is not confirmed by keypoints (object fallback)."),
    ] = False,
) -> None:
    """Show where QUERY was changed, given ORIGINAL: mask, heatmap, overlay.

    The relation is detected: if ORIGINAL explains most of QUERY it is the host
    and the manipulated region is where they differ; otherwise it is a donor
    and the region is the part of QUERY that matches it. With --auto, the
    index is searched and QUERY is localized against the photo labelled host
    and every photo labelled donor; output names get "-host", "-donor1",
    "-donor2", ... before their extension, and the photos skipped are named on
    stderr with the reason. A result whose alignment keypoints do not confirm
    (the --object-fallback guess) is marked UNVERIFIED and exits 1 unless
    --allow-unverified.
    """
    from .localize import AlignmentError

    if not 0.0 < threshold < 1.0:
        raise _fail("--threshold must be between 0 and 1", EXIT_USAGE)
    if (original is None) == (not auto):
        raise _fail("give either ORIGINAL or --auto", EXIT_USAGE)
    outputs = {"mask": out_mask, "heatmap": heatmap, "overlay": overlay}
    failures = unverified = 0
    try:
        if auto:
            plan, runs = api.localize_auto(query, index_dir, threshold=threshold, object_fallback=object_fallback)
            for photo, why in plan.skipped:
                err.print(f"oesir: skipped {escape(str(photo))}: {why}", highlight=False)
            if not plan.originals:
                raise _fail(f"{query}: no source in the collection; nothing to localize against", EXIT_ERROR)
            for done in runs:
                f, u = _show_localized(query, done.original, done.result, done.error, outputs, done.label, as_json, done.role)
                failures, unverified = failures + f, unverified + u
        else:
            result, error = None, None
            try:
                result = api.localize_paths(query, original, threshold, relation=relation, object_fallback=object_fallback)
            except AlignmentError as exc:
                error = exc
            failures, unverified = _show_localized(query, original, result, error, outputs, None, as_json, None)
    except ImageError as exc:
        raise _fail(str(exc), EXIT_USAGE) from None
    except (StoreError, WeightsError, OSError) as exc:
        raise _fail(str(exc)) from None
    if unverified and not allow_unverified:
        err.print(
            f"oesir: error: {unverified} result(s) not confirmed by keypoints (marked UNVERIFIED); "
            "read them as guesses, or pass --allow-unverified",
            highlight=False,
        )
    if failures or (unverified and not allow_unverified):
        raise typer.Exit(EXIT_ERROR)


def _show_localized(
    query: Path,
    original: Path,
    result: LocalizeResult | None,
    error: Exception | None,
    outputs: dict,
    label: str | None,
    as_json: bool,
    role: Relation | None,
) -> tuple[int, int]:
    """Write the outputs asked for and print the result line; returns (did not align, not verified) as 0/1."""
    from .render import suffixed, write_localize_outputs

    if result is None:
        err.print(f"[red]oesir: error:[/red] {escape(str(query))} vs {escape(str(original))}: {error}", highlight=False)
        return 1, 0
    write_localize_outputs(query, result, role=label, **outputs)
    if as_json:
        written = {k: str(suffixed(v, label)) for k, v in outputs.items() if v is not None}
        record = {"query": str(query), "original": str(original), "role": role.value if role else None, **result.as_dict()}
        print(json.dumps({**record, "outputs": written}), flush=True)
        return 0, int(not result.verified)
    a = result.alignment
    flag = "" if result.verified else " UNVERIFIED (object-pair alignment: a guess, not confirmed by keypoints)"
    out.print(
        f"{query} vs {original}: {result.relation} relation, {a.inliers} inliers ({a.method}"
        f"{', mirrored' if a.mirrored else ''}){_further(result)}, changed {100 * result.changed_share:.1f}% of the photo{flag}",
        highlight=False,
    )
    return 0, int(not result.verified)


def _further(result: LocalizeResult) -> str:
    """ ", also pasted in 2 more places" when a donor's content was found more than once."""
    n = len(result.further_placements)
    return f", also pasted in {n} more place{'s' if n > 1 else ''}" if n else ""


@app.command(
    epilog=_examples(
        "oesir report suspect.jpg --out case-file",
        "oesir report suspects/ --index case.oesir --out case-file --pdf",
        "oesir report suspect.jpg --out case-file --json | jq .page",
    )
)
def report(
    suspects: Annotated[
        list[str], typer.Argument(help="Suspect photos or folders (every photo under it, sorted); `-` reads paths from stdin.")
    ],
    out_dir: Annotated[
        Path, typer.Option("--out", "-o", help="Folder for the report: new, empty, or an earlier report (replaced whole).")
    ],
    index_dir: IndexOpt = None,
    pdf: Annotated[bool, typer.Option("--pdf", help="Also print each page to PDF with headless Chromium.")] = False,
    top: Annotated[int, typer.Option("--top", "-n", help="How many ranked photos each page lists.")] = 10,
    threshold: Annotated[float, typer.Option(help="Score (0..1) above which a pixel is manipulated.")] = 0.5,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per suspect per line.")] = False,
    null: Annotated[bool, typer.Option("-0", "--null", help="Paths on stdin are NUL-separated.")] = False,
) -> None:
    """Write the case file an examiner hands on: OUT/index.html and one page per suspect.

    Each page shows the verdict, the suspect with the change outlined, every
    source with its role (the host's change mask, each donor's pasted region
    outlined in the suspect and in the donor), a provenance diagram, the
    evidence in plain sentences, the suspect's hash, size and EXIF, and a
    reproducibility block (versions, model hashes, index, command, UTC time).
    OUT/SHA256SUMS lists the hash of every file written. The report is built
    beside OUT and moved into place when complete.
    """
    from .report import PdfError, ReportError

    suspects = _read_paths(suspects, null)
    if not suspects:
        raise _fail("no suspect photo given", EXIT_USAGE)
    if top < 1:
        raise _fail(f"--top must be at least 1 (got {top})", EXIT_USAGE)
    if not 0.0 < threshold < 1.0:
        raise _fail("--threshold must be between 0 and 1", EXIT_USAGE)
    try:
        with _progress() as bar:
            task = bar.add_task("report", total=None, rate="")

            def progress(i: int, n: int, path: str) -> None:
                bar.update(task, completed=i, total=n, rate=escape(os.path.basename(path)))

            summary = api.report(suspects, out_dir, index_dir, pdf=pdf, top=top, threshold=threshold, progress=progress)
    except (ReportError, PdfError) as exc:
        raise _fail(str(exc)) from None
    except (StoreError, WeightsError, OSError, sqlite3.Error) as exc:
        raise _fail(_index_error(exc)) from None
    for path, why in summary.skipped:
        err.print(f"[yellow]oesir: skipped[/yellow] {escape(path)}: {escape(why)}", highlight=False, markup=True)
    for entry in summary.suspects:
        if entry.error:
            why = f"{escape(entry.suspect)}: {escape(entry.error)}"
            err.print(f"[yellow]oesir: not examined[/yellow] {why} (its page says so)", highlight=False)
        if as_json:
            print(json.dumps(entry.as_dict()), flush=True)
    if not as_json:
        print(summary.index_page)
    if summary.failed:
        raise typer.Exit(EXIT_SKIPPED if summary.failed < len(summary.suspects) + len(summary.skipped) else EXIT_USAGE)


@app.command(epilog=_examples("oesir info", "oesir info --index case.oesir --json | jq .bytes_per_photo"))
def info(
    index_dir: IndexOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False,
) -> None:
    """Index statistics: photos, objects, model, size on disk."""
    try:
        stats = api.info(index_dir)
    except (StoreError, OSError, sqlite3.Error) as exc:
        raise _fail(_index_error(exc)) from None
    if as_json:
        print(json.dumps(stats))
        return
    sizes = {
        "bytes_on_disk": ("on disk", ""),
        "bytes_per_photo": ("per photo", "/photo"),
        "bytes_per_object": ("per object", "/object"),
    }
    for k, v in stats.items():
        label, unit = sizes.get(k, (k, None))
        out.print(f"{label:>18}: {v if unit is None else _human_size(v) + unit}", highlight=False)


def _human_size(n: int) -> str:
    """Bytes for a reader: 612.3 MB, 475.0 KB (powers of 1000, as `du --si`); exact bytes stay in --json."""
    if n < 1000:
        return f"{n} B"
    for unit in ("KB", "MB", "GB", "TB"):
        n /= 1000
        if n < 1000 or unit == "TB":
            break
    return f"{n:.1f} {unit}"


@app.command(epilog=_examples("oesir check", "oesir check --repair", "oesir check --index case.oesir --json"))
def check(
    index_dir: IndexOpt = None,
    repair: Annotated[
        bool, typer.Option("--repair", help="Drop damaged photos and local-feature segments; rebuild the derived graphs.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Verify the index: database integrity, each photo's checksum, each local-feature segment's sha256, the graphs'.

    Exit 0 when the index is intact (or was repaired), 1 when something is
    still damaged; the last line says which command recovers. A damaged or
    missing segment damages every photo whose local features it holds. A
    derived object graph (large indexes) that is missing or out of date is a
    note, not damage: the next search or index rebuilds it.
    """
    directory = index_dir or str(default_index_dir())
    try:
        report = api.check(directory, repair=repair)
    except (StoreError, OSError, sqlite3.Error) as exc:
        raise _fail(_index_error(exc)) from None
    if as_json:
        print(json.dumps(report.as_dict()))
    else:
        out.print(f"index: {report.index}\nphotos: {report.photos}\ndatabase: {report.database}", highlight=False)
        for name, status in report.graphs.items():
            out.print(f"{name}: {status}", highlight=False)
        for file, why in report.damaged_segments:
            out.print(f"damaged segment: {file}: {why}", highlight=False)
        for note in report.notes:
            out.print(f"note: {note}", highlight=False)
        for path, why in report.damaged_photos:
            out.print(f"damaged photo: {path}: {why}", highlight=False)
        for line in report.repaired:
            out.print(f"repaired: {line}", highlight=False)
    if not report.ok:
        raise _fail(f"index at {directory} is damaged; {report.advice()}")


def _index_error(exc: BaseException) -> str:
    """One line for errors from the index files, disk-full first (it is the common one)."""
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if isinstance(exc, DiskFullError):
        return text  # already says what was full and that the index keeps its last committed state
    if api.is_disk_full(exc):
        return f"cannot write the index: disk full ({text}); the index keeps its last committed state"
    if isinstance(exc, sqlite3.Error):
        return f"index database error: {text}; run `oesir check`"
    return text


@weights_app.command("verify", epilog=_examples("oesir weights verify", "OESIR_WEIGHTS=/models oesir weights verify"))
def weights_verify() -> None:
    """Check every file in the weights folder ($OESIR_WEIGHTS or the package's) against the manifest's sha256."""
    try:
        report = api.verify_weights()
    except WeightsError as exc:
        raise _fail(str(exc)) from None
    for f in report.files:
        print(f"{'ok' if f.ok else 'BAD'}  {f.name}")
    if report.bad:
        raise _fail(f"{len(report.bad)} weights file(s) missing or altered")


def _learn_weights(label: str, model: ModelKind, learn: Callable[..., Path]) -> None:
    """Run a `weights` learning job (whitening, codebook) with a progress bar; print the file written."""
    try:
        with _progress() as bar:
            task = bar.add_task(label, total=None, rate="")
            config = replace(api.LEARNING_CONFIG, model=model.value)
            path = learn(config=config, progress=lambda i, n: bar.update(task, completed=i, total=n))
    except (WeightsError, OSError, ValueError) as exc:
        raise _fail(str(exc)) from None
    print(path)


@weights_app.command(
    "whiten",
    epilog=_examples(
        "oesir weights whiten --images training/ --dim 256",
        "oesir weights whiten --images training/ --model student",
    ),
)
def weights_whiten(
    images: Annotated[Path, typer.Option("--images", help="Training photos (never part of a database).")],
    dim: Annotated[int, typer.Option(help="Output dimension.")] = 256,
    model: Annotated[
        ModelKind, typer.Option(help="Features to whiten: teacher or student.", parser=_choice(ModelKind, "--model"))
    ] = ModelKind.TEACHER,
) -> None:
    """Learn the PCA whitening of object embeddings on training photos; add it to the manifest."""
    _learn_weights("whitening", model, lambda **kw: api.learn_whitening_file(images, dim, **kw))


@weights_app.command(
    "pq", epilog=_examples("oesir weights pq --images training/", "oesir weights pq --images training/ --model student")
)
def weights_pq(
    images: Annotated[Path, typer.Option("--images", help="Training photos (never part of a database).")],
    model: Annotated[
        ModelKind, typer.Option(help="Embeddings to quantise: teacher or student.", parser=_choice(ModelKind, "--model"))
    ] = ModelKind.TEACHER,
) -> None:
    """Learn the product-quantisation codebook of `oesir index --codec pq`; add it to the manifest."""
    _learn_weights("codebook", model, lambda **kw: api.learn_codebook_file(images, **kw))


@weights_app.command("vocabulary", epilog=_examples("oesir weights vocabulary --images training/"))
def weights_vocabulary(
    images: Annotated[Path, typer.Option("--images", help="Training photos (never part of a database).")],
) -> None:
    """Learn the local-feature vocabulary and residual PQ codebook on training photos' RootSIFT; add it to the manifest.

    Indexes coded with another vocabulary are refused (re-index with --rebuild)."""
    try:
        with _progress() as bar:
            task = bar.add_task("vocabulary", total=None, rate="")
            path = api.learn_vocabulary_file(images, progress=lambda i, n: bar.update(task, completed=i, total=n))
    except (WeightsError, OSError, ValueError) as exc:
        raise _fail(str(exc)) from None
    print(path)


@weights_app.command(
    "single-pass",
    epilog=_examples(
        "oesir weights single-pass --images training/",
        "oesir weights single-pass --images training/ --out models/",
    ),
)
def weights_single_pass(
    images: Annotated[Path, typer.Option("--images", help="Photos to check the graph on (the first 3).")],
    variant: Annotated[str, typer.Option(help="s3 or s2: which student_<variant>.onnx to build from.")] = "s3",
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            help="Weights folder holding student_<variant>.onnx (default: $OESIR_WEIGHTS or the package's).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Build single_pass_<variant>.onnx (detector + student + NMS + ROIAlign, one call) from an exported student.

    `oesir distill` does this itself; this rebuilds it without training. Needs the
    training extra (onnx). The graph is checked against the student ONNX and numpy.
    """
    try:
        path, parity = api.build_single_pass(images, variant, out)
    except ImportError as exc:
        raise _fail(f"oesir weights single-pass needs the training extra: pip install -e '.[train]' ({exc})") from None
    except (WeightsError, OSError, ValueError, RuntimeError) as exc:
        if variant not in api.SINGLE_PASS_VARIANTS:  # checked by the API once the training extra is there
            raise _fail(f"unknown --variant {variant!r} ({', '.join(api.SINGLE_PASS_VARIANTS)})", EXIT_USAGE) from None
        raise _fail(str(exc)) from None
    print(path)
    err.print(f"single pass {variant}: parity {parity:.1e} against student_{variant}.onnx + numpy", highlight=False)


@app.command(
    epilog=_examples(
        "oesir distill --images training/ --iterations 600",
        "oesir distill --images training/ --variant s2 --out models/ --resume",
    )
)
def distill(
    images: Annotated[Path, typer.Option("--images", help="Unlabelled training photos (never the database).")],
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            help="Weights folder to write the single-pass ONNX and whitening into (default: $OESIR_WEIGHTS or the package's).",
            show_default=False,
        ),
    ] = None,
    variant: Annotated[str, typer.Option(help="s3 (F2 + F3/F4 guidance, the default), s2 (F2 only), s1 (image only).")] = "s3",
    iterations: Annotated[int, typer.Option(help="Training steps.")] = 3000,
    batch: Annotated[int, typer.Option(help="Crops per step.")] = 32,
    lr: Annotated[float, typer.Option(help="Adam learning rate (cosine decay to 0).")] = 1e-3,
    crops: Annotated[int, typer.Option(help="Random crops per training photo (cached with the teacher's maps).")] = 6,
    seed: Annotated[int, typer.Option(help="Seed for crops, batches and initial weights.")] = 0,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from the last checkpoint of the same settings.")] = False,
    cache_dir: Annotated[
        Path | None, typer.Option("--cache-dir", help="Crop cache and checkpoints (default $OESIR_CACHE/distill).")
    ] = None,
    no_whiten: Annotated[bool, typer.Option("--no-whiten", help="Skip learning the student's PCA whitening.")] = False,
) -> None:
    """Train the student branch to imitate the teacher (MSE, Eq. 6) and export the single-pass ONNX.

    Needs the training extra: pip install -e '.\\[train]' (torch, onnx). Prints the written files; the
    manifest in --out lists them with the command that made them.
    """
    try:
        from .distill.command import distill as run_distill
        from .distill.model import VARIANTS
        from .distill.train import TrainConfig
    except ImportError as exc:
        raise _fail(f"oesir distill needs the training extra: pip install -e '.[train]' ({exc})") from None
    if variant not in VARIANTS:
        raise _fail(f"unknown --variant {variant!r} (s1, s2, s3)", EXIT_USAGE)
    if iterations < 1 or batch < 1 or crops < 1 or lr <= 0:
        raise _fail("--iterations, --batch, --crops and --lr must be positive", EXIT_USAGE)
    config = TrainConfig(variant=variant, iterations=iterations, batch=batch, lr=lr, seed=seed)
    try:
        with _progress() as bar:
            tasks: dict[str, int] = {}

            def progress(stage: str, i: int, n: int, loss: float | None) -> None:
                if stage not in tasks:
                    tasks[stage] = bar.add_task(stage, total=n, rate="")
                bar.update(tasks[stage], completed=i, total=n, rate=f"loss {loss:.4f}" if loss is not None else "")

            result = run_distill(
                images,
                out,
                config,
                crops_per_image=crops,
                cache_dir=cache_dir,
                resume=resume,
                whiten=not no_whiten,
                progress=progress,
            )
    except KeyboardInterrupt:
        raise _fail("interrupted; rerun with --resume to continue from the last checkpoint", 130) from None
    except (WeightsError, OSError, ValueError, RuntimeError) as exc:
        raise _fail(str(exc)) from None
    for path in (result.student_onnx, result.single_pass, result.whitening):
        if path:
            print(path)
    err.print(f"distilled {variant}: final loss {result.final_loss:.4f}, ONNX parity {result.parity:.1e}", highlight=False)


def main() -> None:
    """Console entry point."""
    keep_freed_memory()  # photo after photo, the same buffers: reuse them (memory.py)
    try:
        app()
    except KeyboardInterrupt:
        err.print("oesir: interrupted")
        sys.exit(130)
    except BrokenPipeError:
        sys.stderr.close()
        sys.exit(0)
    except Exception as exc:  # a bug: one line, the traceback only on request
        if os.environ.get("OESIR_DEBUG"):
            raise
        err.print(f"oesir: internal error: {type(exc).__name__}: {exc} (set OESIR_DEBUG=1 for the traceback)", highlight=False)
        sys.exit(EXIT_ERROR)
