"""The documented Python API; every CLI command is a thin layer over one of these.

from oesir_cli import api
summary = api.index(["photos/"], index_dir=".oesir")
searcher = api.open_searcher(".oesir")
for m in api.search_path(searcher, "suspect.jpg", top=5):
    print(m.image, m.score)
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .check import CheckReport, check_index
from .choices import Mode, ModelKind, Precision, Relation, Role, Verdict, parse
from .codec import CODECS, DEFAULT_CODEC, make_codec
from .engine import Engine, EngineConfig
from .errors import DiskFullError, StoreError
from .imageio import DEFAULT_MAX_PIXELS, load_rgb
from .indexer import Describer, IndexSummary, StoreWriter, index_paths, walk
from .learn import LEARNING_CONFIG as LEARNING_CONFIG
from .learn import learn_codebook_file as learn_codebook_file  # the API of `oesir weights whiten/pq`
from .learn import learn_vocabulary_file as learn_vocabulary_file  # `oesir weights vocabulary`
from .learn import learn_whitening_file as learn_whitening_file
from .location import IndexLocation
from .location import parse_location as parse_location  # the CLI tells a folder from Milvus before its progress bar
from .registry import (
    SINGLE_PASS_VARIANTS,
    STUDENT_SPECS,
    read_manifest,
    sha256_file,
    verified_file,
    weights_dir,
)
from .search import Match, Searcher, SearchResult
from .store import DB_FILES, GRAPH_FILES, Store, default_index_dir, writer_lock
from .store import is_disk_full as store_is_disk_full
from .workers import check_workers, default_workers, pool_describer

if TYPE_CHECKING:  # localize is imported when first used: it pulls in the teacher
    from .localize import LocalizeResult
    from .report import ReportSummary


_ENGINES: dict[EngineConfig, Engine] = {}


def engine(config: EngineConfig | None = None) -> Engine:
    """A shared engine per configuration (models load once per process)."""
    config = config or EngineConfig()
    if config not in _ENGINES:
        _ENGINES[config] = Engine(config)
    return _ENGINES[config]


def version() -> str:
    """The installed distribution's version (package metadata); "unknown" for sources never installed."""
    try:
        return importlib.metadata.version("oesir")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def index_location(index_dir: str | os.PathLike | None) -> Path:
    """The index folder `index_dir` names (default `$OESIR_INDEX` or ./.oesir).

    A regular file there is a StoreError naming it: opening it as an index would
    advise "run `oesir index ... --index FILE`", which cannot create a folder there.
    """
    directory = Path(index_dir) if index_dir else default_index_dir()
    if directory.exists() and not directory.is_dir():
        raise StoreError(f"index location {directory} is a file, not an index folder")
    return directory


def _config_of(store: Store) -> EngineConfig:
    raw = store.meta("engine_config")
    return EngineConfig.stored(raw)


def index(
    paths: Iterable[str | os.PathLike],
    index_dir: str | os.PathLike | None = None,
    max_objects: int = EngineConfig.max_objects,
    keep_missing: bool = False,
    rebuild: bool = False,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    model: ModelKind | str | None = None,
    codec: str | None = None,
    local_features: bool | None = None,
    progress: Callable[[int, int, str], None] | None = None,
    on_error: Callable[[str, str], None] | None = None,
    ray: str | None = None,
    milvus_index: str | None = None,
    workers: int | None = None,
    precision: Precision | str | None = None,
) -> IndexSummary:
    """Create or update the index at `index_dir` with the photos under `paths`.

    `index_dir` is a folder, `milvus-lite:FILE.db` or `milvus://HOST:PORT/NAME`
    (location.py); `milvus_index` is the vector index type of a new Milvus
    index (milvus_store.INDEX_TYPES). With `ray` ("local", "auto" or a cluster
    address) photos are described by a pool of Ray actors (cluster.py); the
    driver still writes every batch. Otherwise `workers` processes describe them
    (default: one per core, workers.py; 1 describes them in this process).

    `max_objects`, `model` ("teacher" or "student"), `precision` ("int8", the
    default, or "float": the numbers of the teacher path's networks) and
    `local_features` set up a new index; an existing one keeps them (asking for
    others is an error).
    `codec` ("float32", "float16", "pq"; default `codec.DEFAULT_CODEC`, float16) sets how embeddings are
    stored; asking an existing index for a smaller codec re-encodes it in place
    (float32 > float16 > pq), a larger one needs `rebuild`. An unknown `model` is a
    ValueError before anything is created on disk.
    """
    _check_codec(codec)
    check_workers(workers, ray)
    model = parse(ModelKind, model, "model").value if model is not None else None
    precision = parse(Precision, precision, "precision").value if precision is not None else None
    EngineConfig.new(model or ModelKind.TEACHER, precision)  # a conflicting pair is an error before anything is made
    where = parse_location(index_dir)
    if where.is_milvus:
        return _index_milvus(
            where, paths, max_objects, keep_missing, rebuild, max_pixels, model, codec, local_features, progress, on_error,
            ray, milvus_index, workers, precision,
        )  # fmt: skip
    if milvus_index is not None:
        raise StoreError(f"--milvus-index applies to a Milvus index, not to the folder {where.text}")
    directory = index_location(index_dir)
    directory.mkdir(parents=True, exist_ok=True)
    with writer_lock(directory):
        if rebuild:
            start_over(directory, on_error)
        store = Store(directory, create=True, locked=True)
        try:
            store.prepare_for_writing()
            have = store.meta("engine_config")
            config = _engine_config(have, str(directory), max_objects, model, local_features, precision)
            eng = engine(config)
            store.check_model(eng.version, create=True, equivalent=eng.equivalent_versions)
            if have is None:
                with store.transaction():
                    store.set_meta("engine_config", json.dumps(config.as_dict()))
                    store.set_meta("embedding_dim", str(eng.embedding_dim))
                    store.set_codec(codec or DEFAULT_CODEC, _codebook(config, codec or DEFAULT_CODEC)[1])
            elif codec and codec != store.codec().name:
                _transcode(store, config, codec)
            return index_paths(
                StoreWriter(store),
                _describer(eng, max_pixels, ray, workers),
                paths,
                keep_missing=keep_missing,
                progress=progress,
                on_error=on_error,
            )
        finally:
            store.close()


def _engine_config(
    have: str | None,
    where: str,
    max_objects: int,
    model: str | None,
    local_features: bool | None,
    precision: str | None = None,
) -> EngineConfig:
    """The engine configuration of an index: the one it has (`have`, JSON), else a new one; a conflicting request is
    a StoreError."""
    keypoints = EngineConfig.local_keypoints if local_features is not False else 0
    config = (
        EngineConfig.stored(have)
        if have
        else EngineConfig.new(model or "teacher", precision, max_objects=max_objects, local_keypoints=keypoints)
    )
    if precision and config.precision().value != precision:
        raise StoreError(f"index at {where} computes in {config.precision().value}; use --rebuild to switch to {precision}")
    if model and config.model != model:
        raise StoreError(f"index at {where} uses the {config.model} model; use --rebuild to switch to {model}")
    if local_features is not None and (config.local_keypoints > 0) != local_features:
        has = "has" if config.local_keypoints else "has no"
        raise StoreError(f"index at {where} {has} local features; use --rebuild to change that")
    return config


def _describer(eng: Engine, max_pixels: int, ray: str | None, workers: int | None) -> Describer:
    """Describe photos on this machine's cores (worker processes), or on a Ray cluster (imported only then)."""
    if ray is None:
        return pool_describer(eng, max_pixels, workers or default_workers())
    from .cluster import ray_describer

    return ray_describer(eng.config, max_pixels, ray)


def _index_milvus(
    where: IndexLocation,
    paths: Iterable[str | os.PathLike],
    max_objects: int,
    keep_missing: bool,
    rebuild: bool,
    max_pixels: int,
    model: str | None,
    codec: str | None,
    local_features: bool | None,
    progress: Callable[[int, int, str], None] | None,
    on_error: Callable[[str, str], None] | None,
    ray: str | None,
    milvus_index: str | None,
    workers: int | None,
    precision: str | None = None,
) -> IndexSummary:
    """`index` into Milvus: the same stages, written through `MilvusStore` (one writer at a time)."""
    if codec not in (None, "float32"):
        raise StoreError(
            f"{where.text}: Milvus stores float32 vectors; compress them on the server with --milvus-index IVF_SQ8 or IVF_PQ"
        )
    from .milvus_store import DEFAULT_INDEX_TYPE, MilvusStore

    with ExitStack() as stack:
        if ray is not None:
            from .cluster import ray_session

            stack.enter_context(ray_session(ray))  # Ray before Milvus opens connections: see `ray_session`
        store = MilvusStore(where, create=True)
        stack.callback(store.close)
        with store.writing():
            if rebuild:
                store.drop()
            elif store.outdated():
                raise StoreError(store.outdated_message())
            have = store.meta("engine_config")
            config = _engine_config(have, where.text, max_objects, model, local_features, precision)
            eng = engine(config)
            if have is None:
                store.create(eng.embedding_dim, milvus_index or DEFAULT_INDEX_TYPE)
                store.set_meta("embedding_dim", str(eng.embedding_dim))
                store.set_meta("engine_config", json.dumps(config.as_dict()))
            elif milvus_index is not None and milvus_index != store.meta("index_type"):
                raise StoreError(f"index at {where.text} uses {store.meta('index_type')}; use --rebuild to change its index type")
            store.check_model(eng.version, create=True, equivalent=eng.equivalent_versions)
            describe = _describer(eng, max_pixels, ray, workers)
            return index_paths(store, describe, paths, keep_missing=keep_missing, progress=progress, on_error=on_error)


def _check_codec(codec: str | None) -> None:
    if codec is not None and codec not in CODECS:
        raise StoreError(f"unknown codec {codec!r}; one of {', '.join(CODECS)}")


def _codebook(config: EngineConfig, codec: str) -> tuple[Path | None, str | None]:
    """The PQ codebook for `config` (checked against the manifest) and its 'file@sha256' tag; None, None if not pq."""
    if codec != "pq":
        return None, None
    path, digest = verified_file(config.codebook_file())
    return path, f"{path.name}@{digest}"


def transcode(index_dir: str | os.PathLike | None, codec: str) -> int:
    """Re-encode an index's embeddings with a smaller codec (float32 > float16 > pq) without re-reading photos.

    One transaction: a crash leaves the old codec. Returns the photos re-encoded.
    """
    _check_codec(codec)
    if parse_location(index_dir).is_milvus:
        raise StoreError(f"{index_dir}: a Milvus index stores float32 vectors; its server-side index type compresses them")
    directory = index_location(index_dir)
    with writer_lock(directory):
        store = Store(directory, locked=True)
        try:
            store.prepare_for_writing()
            if codec == store.codec().name:
                return 0
            return _transcode(store, _config_of(store), codec)
        finally:
            store.close()


def _transcode(store: Store, config: EngineConfig, codec: str) -> int:
    have = store.codec().name
    if CODECS.index(codec) < CODECS.index(have):
        raise StoreError(f"index at {store.dir} stores {have} embeddings; {codec} needs `--rebuild`")
    path, tag = _codebook(config, codec)
    return store.transcode(make_codec(codec, store.embedding_dim(), path), tag)


def start_over(directory: Path, on_error: Callable[[str, str], None] | None = None) -> None:
    """Empty the index for `--rebuild` (caller holds the lock). A database that cannot be opened is moved aside, not deleted."""
    for name in GRAPH_FILES:
        (directory / name).unlink(missing_ok=True)
    try:
        store = Store(directory, locked=True)
        try:
            store.clear()
            return
        finally:
            store.close()
    except (StoreError, sqlite3.DatabaseError) as exc:
        if not (directory / DB_FILES[0]).exists():
            return
        stamp = time.strftime("%Y%m%d-%H%M%S")
        for name in DB_FILES:
            if (directory / name).exists():
                os.replace(directory / name, directory / f"{name}.damaged-{stamp}")
        if on_error:
            on_error(str(directory / DB_FILES[0]), f"{exc}; moved aside as {DB_FILES[0]}.damaged-{stamp}, starting over")


def open_searcher(index_dir: str | os.PathLike | None = None) -> Searcher:
    """Open an existing index for searching (refuses one built by another model version)."""
    where = parse_location(index_dir)
    if where.is_milvus:
        from .milvus_store import MilvusStore
        from .search.milvus import MilvusPhotos

        remote = MilvusStore(where)
        try:
            have = remote.meta("engine_config")
            eng = engine(EngineConfig.stored(have))
            remote.check_model(eng.version, create=False, equivalent=eng.equivalent_versions)
            return Searcher(remote, eng, photos=MilvusPhotos(remote))
        except BaseException:
            remote.close()
            raise
    store = Store(index_location(index_dir))
    eng = engine(_config_of(store))
    store.check_model(eng.version, create=False, equivalent=eng.equivalent_versions)
    return Searcher(store, eng)


def search_path(searcher: Searcher, query: str | os.PathLike, top: int = 10, mode: Mode | str = Mode.FUSED) -> list[Match]:
    """Ranked matches for the photo at `query`; an unknown `mode` or a `top` below 1 is a ValueError before the photo is read."""
    mode = parse(Mode, mode, "mode")
    if top < 1:  # a slice would take it: -3 gives all but the last 3, 0 nothing
        raise ValueError(f"top must be at least 1, not {top}")
    return searcher.search_rgb(load_rgb(query), top=top, mode=mode.value)


def search_file(searcher: Searcher, query: str | os.PathLike, top: int = 10, mode: Mode | str = Mode.FUSED) -> SearchResult:
    """`search_path` with roles, a verdict and the query file's sha256 (what `oesir search` prints)."""
    mode = parse(Mode, mode, "mode")
    if top < 1:
        raise ValueError(f"top must be at least 1, not {top}")
    result = searcher.search(load_rgb(query), top=top, mode=mode.value)
    return replace(result, query=os.fspath(query), sha256=sha256_file(Path(query)))


def provenance(searcher: Searcher) -> dict:
    """What produced a result: oesir's version, the model version the index was built with, the index folder."""
    return {"oesir_version": version(), "model_version": searcher.engine.version, "index": searcher.store.location}


def query_photos(paths: Iterable[str | os.PathLike], errors: list[tuple[str, str]]) -> list[str]:
    """The query photos `paths` name: a file as given, a folder replaced by the photos under it (what
    `index` would walk), sorted. A folder with no photo, or one that cannot be read, goes into `errors`."""
    found: list[str] = []
    for p in paths:
        if not os.path.isdir(p):
            found.append(os.fspath(p))
            continue
        under = sorted(str(f) for f in walk([p], errors))
        if not under:
            errors.append((os.fspath(p), "no photos under this folder"))
        found.extend(under)
    return found


def is_disk_full(exc: BaseException) -> bool:
    """Whether `exc` is a write that failed for lack of space, told by type and error code, never by message text.

    The store raises `DiskFullError`; an error from outside it (a mask being
    written, the lock file) can still be an OSError with ENOSPC or SQLITE_FULL.
    """
    return isinstance(exc, DiskFullError) or store_is_disk_full(exc)


def info(index_dir: str | os.PathLike | None = None) -> dict:
    """Index statistics. Sizes are of every file in the index folder, measured after this
    reader's connection is closed (so without the WAL file it would otherwise leave). A Milvus index reports
    no sizes (the server holds them)."""
    where = parse_location(index_dir)
    if where.is_milvus:
        return _milvus_info(where)
    directory = index_location(index_dir)
    store = Store(directory)
    try:
        photos, objects = store.count()
        stats = {
            "index": str(directory),
            "photos": photos,
            "objects": objects,
            "model_version": store.meta("model_version"),
            "embedding_dim": store.embedding_dim(),
            "codec": store.meta("codec", "float32"),
            "local_features": bool(_config_of(store).local_keypoints),
            "generation": store.generation,
            "format": int(store.meta("format", "0") or 0),
        }
    finally:
        store.close()
    size = sum(p.stat().st_size for p in directory.iterdir() if p.is_file())
    return {
        **stats,
        "bytes_on_disk": size,
        "bytes_per_photo": round(size / photos) if photos else 0,
        "bytes_per_object": round(size / objects) if objects else 0,
    }


def _milvus_info(where: IndexLocation) -> dict:
    from .milvus_store import MilvusStore

    store = MilvusStore(where)
    try:
        photos, objects = store.count()
        config = store.meta("engine_config")
        return {
            "index": where.text,
            "photos": photos,
            "objects": objects,
            "model_version": store.meta("model_version"),
            "embedding_dim": store.embedding_dim(),
            "codec": "float32",
            "local_features": bool(config and json.loads(config).get("local_keypoints")),
            "generation": store.generation,
            "format": "milvus",
            "index_type": store.meta("index_type"),
        }
    finally:
        store.close()


def check(index_dir: str | os.PathLike | None = None, repair: bool = False) -> CheckReport:
    """Verify the index (see `oesir_cli.check`); with `repair`, drop damaged photos and rebuild the graphs.

    A Milvus index: photos with no object rows are damaged; rows of photos an
    interrupted write left hidden, and rows no visible photo owns, are noted;
    `repair` removes all of them (`oesir index` re-adds the photos)."""
    where = parse_location(index_dir)
    if not where.is_milvus:
        return check_index(index_location(index_dir), repair=repair)
    from .milvus_store import MilvusStore, busy_message

    store = MilvusStore(where)
    try:
        busy = store.writer()
        if busy is not None and repair:
            raise StoreError(busy_message(where.text, busy))
        damaged, pending, orphans = store.inspect()
        report = CheckReport(index=where.text, photos=store.count()[0])
        report.damaged_photos = [(path, "no object rows (an interrupted write)") for _, path in damaged]
        if busy is not None:
            who = f"pid {busy.get('pid')} on {busy.get('host')}"
            report.leftovers.append(f"being written now ({who}): hidden photos and stray rows may be its batch in progress")
        if pending:
            report.leftovers.append(f"{len(pending)} photo(s) hidden by an interrupted write; the next `oesir index` redoes them")
        if orphans:
            report.leftovers.append(f"{orphans} row(s) owned by no visible photo (an interrupted write)")
        if repair and (damaged or pending or orphans):
            with store.writing():
                removed = store.repair([i for i, _ in damaged], pending)
            report.repaired.append(f"removed {len(damaged) + len(pending)} photo(s) and {removed} stray row(s)")
            report.damaged_photos = []
            report.photos = store.count()[0]
        return report
    finally:
        store.close()


def localize_paths(
    query: str | os.PathLike,
    original: str | os.PathLike,
    threshold: float | None = None,
    use_features: bool = True,
    relation: Relation | str | None = None,
    object_fallback: bool = False,
) -> LocalizeResult:
    """Localize the change in `query` given `original` (see `oesir_cli.localize.localize`).

    `relation` is what `original` is to `query`: "host", "donor", or "auto"/None
    (detected). Anything else is a ValueError before a photo is read: a typo
    must not silently run one of the two paths.

    Keypoint alignment first. With `object_fallback`, when it fails, the
    best-matching object pair (the paper's Eq. 8) aligns the two. That is off by
    default: measured on CASIA, object-pair distances of true donors (0.62-1.79)
    overlap those of unrelated photos (from 0.47), so it cannot tell a weak
    donor from an unrelated photo, and a wrong alignment is a garbage mask.
    """
    from .codec import squared_l2
    from .localize import DEFAULT_THRESHOLD, AlignmentError, localize
    from .teacher import Teacher

    rel = parse(Relation, Relation.AUTO if relation is None else relation, "relation")
    relation = None if rel is Relation.AUTO else rel.value
    q, o = load_rgb(query), load_rgb(original)
    teacher = Teacher() if use_features else None
    th = DEFAULT_THRESHOLD if threshold is None else threshold
    try:
        return localize(q, o, threshold=th, teacher=teacher, relation=relation)
    except AlignmentError:
        if not object_fallback:
            raise
        eng = engine()
        qb, qe = eng.objects(q)
        ob, oe = eng.objects(o)
        if len(qb) < 2 or len(ob) < 2:
            raise
        d = squared_l2(qe[1:], oe[1:])  # object pairs, whole images excluded
        i, j = np.unravel_index(int(d.argmin()), d.shape)
        return localize(q, o, threshold=th, teacher=teacher, object_pair=(qb[1 + i], ob[1 + j]), relation=relation)


@dataclass(frozen=True)
class AutoOriginal:
    """One original `localize_auto` localizes against, and the label its output files get ("mask-<label>.png")."""

    role: Relation  # HOST or DONOR
    original: Path
    label: str  # "host", "donor1", "donor2", ...


@dataclass(frozen=True)
class AutoPlan:
    """What `localize_auto` will do for a query, decided from its search result before any alignment."""

    verdict: Verdict | None
    originals: list[AutoOriginal]  # the host first, then every donor, in ranking order
    skipped: list[tuple[Path, str]]  # ranked photos not localized, and why
    result: SearchResult | None = None  # the search the plan was made from


def plan_auto(result: SearchResult) -> AutoPlan:
    """Localize against the photo search labels host and every photo it labels donor; say why the others are skipped.

    Candidates are skipped: the evidence supports neither role, and a mask
    against an unrelated photo would only mislead.
    """
    originals: list[AutoOriginal] = []
    skipped: list[tuple[Path, str]] = []
    donors = 0
    for m in result.matches:
        if m.role is Role.HOST:
            originals.insert(0, AutoOriginal(Relation.HOST, Path(m.image), "host"))
        elif m.role is Role.DONOR:
            donors += 1
            originals.append(AutoOriginal(Relation.DONOR, Path(m.image), f"donor{donors}"))
        else:
            skipped.append((Path(m.image), "a candidate only: no keypoint or region evidence names it host or donor"))
    return AutoPlan(result.verdict, originals, skipped, result)


@dataclass(frozen=True)
class AutoLocalization:
    """One original `localize_auto` localized against: its role, and the result or why it did not align."""

    role: Relation  # HOST or DONOR
    original: Path
    result: LocalizeResult | None  # None when the two could not be aligned
    error: Exception | None = None  # the AlignmentError, when result is None
    label: str = ""  # see AutoOriginal


def localize_auto(
    query: str | os.PathLike,
    index_dir: str | os.PathLike | None = None,
    threshold: float | None = None,
    use_features: bool = True,
    object_fallback: bool = False,
    searcher: Searcher | None = None,
    top: int = 10,
) -> tuple[AutoPlan, Iterator[AutoLocalization]]:
    """Search the index for `query`, then localize it against its host and every donor (`plan_auto`).

    Returns the plan at once and an iterator that localizes one original at a
    time (host first), so a caller can show the host's result while the donors
    are being localized. An original that does not align is yielded with its
    error, the others still run; other errors propagate.
    """
    from .localize import AlignmentError

    searcher = searcher or open_searcher(index_dir)
    plan = plan_auto(search_file(searcher, query, top=top, mode=Mode.FUSED))

    def run() -> Iterator[AutoLocalization]:
        for o in plan.originals:
            try:
                result = localize_paths(
                    query,
                    o.original,
                    threshold=threshold,
                    use_features=use_features,
                    relation=o.role,
                    object_fallback=object_fallback,
                )
            except AlignmentError as exc:
                yield AutoLocalization(o.role, o.original, None, exc, o.label)
                continue
            yield AutoLocalization(o.role, o.original, result, None, o.label)

    return plan, run()


def report(
    suspects: Iterable[str | os.PathLike],
    out: str | os.PathLike,
    index_dir: str | os.PathLike | None = None,
    pdf: bool = False,
    top: int = 10,
    threshold: float | None = None,
    command: str | None = None,
    progress: Callable[[int, int, str], None] | None = None,
) -> ReportSummary:
    """Write the case file for `suspects` to the folder `out` (`oesir report`; see `oesir_cli.report.write_report`).

    Each suspect is searched and localized against its host and donors exactly
    as `localize_auto` does; the report adds pictures, file facts and a
    reproducibility block, and with `pdf` prints each page with headless Chromium.
    """
    from .report import write_report

    return write_report(
        suspects, out, index_dir=index_dir, pdf=pdf, top=top, threshold=threshold, command=command, progress=progress
    )


@dataclass(frozen=True)
class WeightsFileCheck:
    """One file of the weights manifest, checked: "ok", "missing" or "altered" (sha256 differs)."""

    name: str
    path: Path
    status: str

    @property
    def ok(self) -> bool:
        return self.status == "ok"


@dataclass(frozen=True)
class WeightsReport:
    """`verify_weights`: every file the manifest lists, in its order."""

    directory: Path
    files: tuple[WeightsFileCheck, ...]

    @property
    def bad(self) -> list[WeightsFileCheck]:
        return [f for f in self.files if not f.ok]

    @property
    def ok(self) -> bool:
        return not self.bad

    def as_dict(self) -> dict:
        return {"directory": str(self.directory), "ok": self.ok, "files": {f.name: f.status for f in self.files}}


def verify_weights(directory: str | os.PathLike | None = None) -> WeightsReport:
    """Check every file listed in the weights manifest (default `weights_dir()`) against its sha256.

    Reports each file instead of stopping at the first bad one, so one run shows
    everything to restore. A missing or unreadable manifest is a WeightsError.
    """
    folder = Path(directory) if directory else weights_dir()
    manifest = read_manifest(folder)
    files = []
    for name, entry in manifest["files"].items():
        path = folder / name
        status = "missing" if not path.is_file() else "ok" if sha256_file(path) == entry["sha256"] else "altered"
        files.append(WeightsFileCheck(name, path, status))
    return WeightsReport(folder, tuple(files))


def build_single_pass(
    images: str | os.PathLike,
    variant: str = "s3",
    weights: str | os.PathLike | None = None,
    command: str | None = None,
) -> tuple[Path, float]:
    """Build single_pass_<variant>.onnx in `weights` from the student_<variant>.onnx there, without training.

    The graph is checked against the student ONNX + numpy on up to 3 photos under
    `images` and listed in the manifest with `command` (default: the equivalent
    `oesir weights single-pass` line). Returns the file and the parity (worst
    relative error). Needs the training extra (onnx): ImportError without it,
    checked before `variant` (ValueError unless one of SINGLE_PASS_VARIANTS).
    """
    from .detector import Detector
    from .distill.command import assemble_single_pass, onnx_maps

    if variant not in SINGLE_PASS_VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; one of {', '.join(SINGLE_PASS_VARIANTS)}")
    out = Path(weights) if weights is not None else weights_dir()
    student = out / STUDENT_SPECS[variant].file
    verified_file(student.name, out)
    command = command or f"oesir weights single-pass --images {images} --variant {variant} --out {out}"
    return assemble_single_pass(out, variant, onnx_maps(student), Path(images), command, student.name, Detector())
