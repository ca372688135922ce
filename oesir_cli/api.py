"""The documented Python API; every CLI command is a thin layer over one of these.

from oesir_cli import api
summary = api.index(["photos/"], index_dir=".oesir")
searcher = api.open_searcher(".oesir")
for m in api.search_path(searcher, "suspect.jpg", top=5):
    print(m.image, m.score)
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from .check import CheckReport, check_index
from .codec import CODECS, make_codec, save_codebook, train_codebook
from .embed import Whitening, learn_whitening
from .engine import Engine, EngineConfig
from .imageio import DEFAULT_MAX_PIXELS, load_rgb
from .indexer import IndexSummary, index_paths, walk
from .registry import add_manifest_entry, verified_file, weights_dir
from .search import Match, Searcher
from .store import DB_FILES, GRAPH_FILES, Store, default_index_dir, writer_lock
from .errors import StoreError

_ENGINES: dict[EngineConfig, Engine] = {}


def engine(config: EngineConfig | None = None) -> Engine:
    """A shared engine per configuration (models load once per process)."""
    config = config or EngineConfig()
    if config not in _ENGINES:
        _ENGINES[config] = Engine(config)
    return _ENGINES[config]


def _config_of(store: Store) -> EngineConfig:
    raw = store.meta("engine_config")
    return EngineConfig(**json.loads(raw)) if raw else EngineConfig()


def index(
    paths: Iterable[str | os.PathLike],
    index_dir: str | os.PathLike | None = None,
    max_objects: int = 8,
    keep_missing: bool = False,
    rebuild: bool = False,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    model: str | None = None,
    codec: str | None = None,
    local_features: bool | None = None,
    progress: Callable[[int, int, str], None] | None = None,
    on_error: Callable[[str, str], None] | None = None,
) -> IndexSummary:
    """Create or update the index at `index_dir` with the photos under `paths`.

    `max_objects`, `model` ("teacher" or "student") and `local_features` set up a
    new index; an existing one keeps them (asking for others is an error).
    `codec` ("float32", "float16", "pq"; default float32) sets how embeddings are
    stored; asking an existing index for a smaller codec re-encodes it in place
    (float32 > float16 > pq), a larger one needs `rebuild`.
    """
    _check_codec(codec)
    directory = Path(index_dir) if index_dir else default_index_dir()
    directory.mkdir(parents=True, exist_ok=True)
    with writer_lock(directory):
        if rebuild:
            start_over(directory, on_error)
        store = Store(directory, create=True, locked=True)
        try:
            store.prepare_for_writing()
            have = store.meta("engine_config")
            keypoints = EngineConfig.local_keypoints if local_features is not False else 0
            config = (
                EngineConfig(**json.loads(have))
                if have
                else EngineConfig(max_objects=max_objects, model=model or "teacher", local_keypoints=keypoints)
            )
            if model and config.model != model:
                raise StoreError(f"index at {directory} uses the {config.model} model; use --rebuild to switch to {model}")
            if local_features is not None and (config.local_keypoints > 0) != local_features:
                has = "has" if config.local_keypoints else "has no"
                raise StoreError(f"index at {directory} {has} local features; use --rebuild to change that")
            eng = engine(config)
            store.check_model(eng.version, create=True)
            if have is None:
                with store.transaction():
                    store.set_meta("engine_config", json.dumps(config.as_dict()))
                    store.set_meta("embedding_dim", str(eng.embedding_dim))
                    store.set_codec(codec or "float32", _codebook(config, codec or "float32")[1])
            elif codec and codec != store.codec().name:
                _transcode(store, config, codec)
            return index_paths(
                store, eng, paths, keep_missing=keep_missing, max_pixels=max_pixels, progress=progress, on_error=on_error
            )
        finally:
            store.close()


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
    directory = Path(index_dir) if index_dir else default_index_dir()
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
    store = Store(Path(index_dir) if index_dir else default_index_dir())
    eng = engine(_config_of(store))
    store.check_model(eng.version, create=False)
    return Searcher(store, eng)


def search_path(searcher: Searcher, query: str | os.PathLike, top: int = 10, mode: str = "fused") -> list[Match]:
    """Ranked matches for the photo at `query`."""
    return searcher.search_rgb(load_rgb(query), top=top, mode=mode)


def info(index_dir: str | os.PathLike | None = None) -> dict:
    """Index statistics. Sizes are of every file in the index folder, measured after this
    reader's connection is closed (so without the WAL file it would otherwise leave)."""
    directory = Path(index_dir) if index_dir else default_index_dir()
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


def check(index_dir: str | os.PathLike | None = None, repair: bool = False) -> CheckReport:
    """Verify the index (see `oesir_cli.check`); with `repair`, drop damaged photos and rebuild the graphs."""
    return check_index(Path(index_dir) if index_dir else default_index_dir(), repair=repair)


def _training_regions(
    images: str | os.PathLike,
    describe: Callable[[np.ndarray], list[np.ndarray]],
    progress: Callable[[int, int], None] | None,
) -> tuple[np.ndarray, int]:
    """All region vectors `describe` gives for the training photos under `images`, and the photo count."""
    files = sorted(walk([images], []))
    if not files:
        raise ValueError(f"no photos under {images}")
    out = []
    for i, f in enumerate(files):
        if progress:
            progress(i, len(files))
        out += describe(load_rgb(f))
    return np.concatenate(out), len(files)


def _model_flag(config: EngineConfig) -> str:
    return "" if config.model == "teacher" else f" --model {config.model}"


def learn_whitening_file(
    images: str | os.PathLike,
    dim: int = 256,
    config: EngineConfig | None = None,
    progress: Callable[[int, int], None] | None = None,
    weights: Path | None = None,
) -> Path:
    """Learn PCA whitening on the region descriptors of training photos; write it and its manifest entry.

    Regions: the whole photo and up to 30 class-agnostic detections (score >= 0.02),
    described by the engine's feature maps (teacher, or the distilled student).
    """
    config = config or EngineConfig()
    regions = Engine.region_describer(config, weights)
    descs, count = _training_regions(images, lambda rgb: [regions(rgb)], progress)
    whitening = learn_whitening(descs, dim)
    path = (weights or weights_dir()) / config.whitening_file()
    whitening.save(path)
    add_manifest_entry(
        path,
        {
            "model": f"whitening for {config.features_name()}",
            "source": {"photos": str(images), "count": count, "regions": len(descs)},
            "licence": "derived statistics (PCA of region features) of the training photos; see LICENSES.md",
            "preprocessing": "input: concatenated L2-normalised max-pooled s32 and s16 features of a box",
            "command": f"oesir weights whiten --images {images} --dim {dim}" + _model_flag(config),
        },
    )
    return path


def learn_codebook_file(
    images: str | os.PathLike,
    config: EngineConfig | None = None,
    progress: Callable[[int, int], None] | None = None,
    weights: Path | None = None,
) -> Path:
    """Learn the PQ codebook (`--codec pq`) on whitened region embeddings of training photos; write it + manifest entry.

    Regions as for the whitening (whole photo + up to 30 detections at score >= 0.02),
    of each photo and of its mirror image, whitened with the configuration's whitening.
    """
    config = config or EngineConfig()
    regions = Engine.region_describer(config, weights)
    whitening = Whitening.load(verified_file(config.whitening_file(), weights)[0])
    embs, count = _training_regions(
        images, lambda rgb: [whitening.apply(regions(x)) for x in (rgb, np.ascontiguousarray(rgb[:, ::-1]))], progress
    )
    centroids = train_codebook(embs)
    path = (weights or weights_dir()) / config.codebook_file()
    save_codebook(path, centroids)
    add_manifest_entry(
        path,
        {
            "model": f"PQ codebook for {config.features_name()} ({centroids.shape[0]} x {centroids.shape[1]} centroids)",
            "source": {"photos": str(images), "count": count, "vectors": len(embs)},
            "licence": "derived statistics (k-means of whitened region features) of the training photos; see LICENSES.md",
            "preprocessing": f"input: embeddings whitened by {config.whitening_file()}, photos and their mirror images",
            "command": f"oesir weights pq --images {images}" + _model_flag(config),
        },
    )
    return path


def localize_paths(
    query: str | os.PathLike,
    original: str | os.PathLike,
    threshold: float | None = None,
    use_features: bool = True,
    relation: str | None = None,
    object_fallback: bool = False,
):
    """Localize the change in `query` given `original` (see `oesir_cli.localize.localize`).

    Keypoint alignment first. With `object_fallback`, when it fails, the
    best-matching object pair (the paper's Eq. 8) aligns the two. That is off by
    default: measured on CASIA, object-pair distances of true donors (0.62-1.79)
    overlap those of unrelated photos (from 0.47), so it cannot tell a weak
    donor from an unrelated photo, and a wrong alignment is a garbage mask.
    """
    from .codec import squared_l2
    from .localize import DEFAULT_THRESHOLD, AlignmentError, localize
    from .teacher import Teacher

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
