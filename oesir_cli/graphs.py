"""Upkeep of the derived search structures: which ones an index needs, their stamps, load or rebuild.

SQLite holds the truth; the structures are caches of it, saved beside it so
that opening an index does not rebuild them:

* above EXACT_OBJECTS_MAX stored objects, an object structure: `objects.ivfpq`
  (faiss IVF-PQ) for pq codes when faiss is installed, else `objects.hnsw`.
  Below, search scores every photo exactly, which is then cheaper.

(Local features need no derived structure: their segments are searched as
they are, see postings.py.)

Each carries a stamp of the data it was built from (`graph_stamp`) and a digest
of the rows it holds (`rows_digest`). When photos were only added since, the
new rows are added to it (`store.grown_from`): adding photos never rebuilds
it. Any other change (a photo removed or replaced, codes re-encoded) rebuilds
it; a structure whose stamp does not match is never trusted. A writer saves
what it brings up to date; a reader saves only when no writer is at work.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable

import numpy as np

from . import ivf
from .ann import Graph, cached_graph
from .errors import StoreError
from .store import OBJECT_FILES, Catalogue, Store, check_stamp, stamp_path, writer_lock

EXACT_OBJECTS_MAX = 200_000
OBJECT_GRAPH = {"m": 16, "ef_construction": 200}

ObjectStructure = Graph | ivf.IVFPQ


def graph_stamp(store: Store, catalogue: Catalogue, kind: str) -> dict:
    """What a structure of `kind` ('objects') built from `catalogue` is stamped with.

    The keys and their order are part of the index format: an index written by any
    oesir with these stamps keeps its graphs.
    """
    stamp = {"generation": catalogue.generation, "model_version": store.meta("model_version"), "kind": kind}
    return {**stamp, "codec": catalogue.codec.name} if kind == "objects" else stamp


def rows_digest(catalogue: Catalogue) -> Callable[[int], str]:
    """sha256 of the first n object rows as a structure holds them (each row's photo id, object number
    and stored code); n past the catalogue's rows is an IndexError."""

    def digest(n: int) -> str:
        if not 0 <= n <= len(catalogue.codes):
            raise IndexError(f"{n} rows asked of {len(catalogue.codes)}")
        h = hashlib.sha256()
        h.update(np.ascontiguousarray(catalogue.image_ids[catalogue.object_image[:n]], np.int64).tobytes())
        h.update(np.ascontiguousarray(catalogue.object_index[:n], np.int64).tobytes())
        h.update(np.ascontiguousarray(catalogue.codes[:n]))  # a view of the stored codes: hashed without a copy
        return h.hexdigest()

    return digest


def object_structure(catalogue: Catalogue) -> str:
    """pq codes are searched by faiss IVF-PQ (when installed); other codecs by an hnswlib graph."""
    return "objects.ivfpq" if catalogue.codec.name == "pq" and ivf.available() else "objects.hnsw"


def needed_graphs(store: Store, catalogue: Catalogue) -> dict[str, dict]:
    """Structure file -> the stamp it must carry, for the structures search uses on `catalogue`.

    The object structure is only needed above EXACT_OBJECTS_MAX objects; below,
    search scores every photo exactly.
    """
    out = {}
    if len(catalogue.codes) > EXACT_OBJECTS_MAX:
        out[object_structure(catalogue)] = graph_stamp(store, catalogue, "objects")
    return out


def graph_statuses(store: Store, catalogue: Catalogue) -> dict[str, str]:
    """Structure file -> 'ok', 'missing', 'stale' or 'damaged' (bytes hashed), for each one `catalogue` needs."""
    return {
        name: check_stamp(store.dir / name, stamp, hash_bytes=True)[0] for name, stamp in needed_graphs(store, catalogue).items()
    }


def load_graphs(store: Store, catalogue: Catalogue, writable: bool) -> ObjectStructure | None:
    """The object structure for `catalogue`: loaded if current, else built (and saved when `writable`).

    The object structure is None when not needed (a leftover file is removed when `writable`).
    """
    stamps = needed_graphs(store, catalogue)
    objects: ObjectStructure | None = None
    if "objects.ivfpq" in stamps:
        objects = ivf.cached_ivfpq(
            store.dir / "objects.ivfpq",
            stamps["objects.ivfpq"],
            catalogue.codec,
            catalogue.codes,
            writable,
            digest_of=rows_digest(catalogue),
        )
    elif "objects.hnsw" in stamps:
        objects = cached_graph(
            store.dir / "objects.hnsw",
            lambda lo=0: catalogue.codec.decode(catalogue.codes[lo:]),
            stamps["objects.hnsw"],
            writable,
            shape=(len(catalogue.codes), catalogue.codec.dim),
            digest_of=rows_digest(catalogue),
            **OBJECT_GRAPH,
        )
    if writable:
        kept = {stamp_path(store.dir / name).name for name in stamps} | set(stamps)
        for name in set(OBJECT_FILES) - kept:
            (store.dir / name).unlink(missing_ok=True)
    return objects


def open_graphs_for_reading(store: Store, catalogue: Catalogue) -> ObjectStructure | None:
    """`load_graphs` for a reader: a stale structure is rebuilt in memory, and saved only if no writer is at work.

    A reader that can take the writer lock saves what it rebuilt, so the next reader need not;
    under a writer it leaves the files alone (the writer's own refresh saves them).
    """
    if not os.access(store.dir, os.W_OK):
        return load_graphs(store, catalogue, writable=False)
    try:
        with writer_lock(store.dir):
            return load_graphs(store, catalogue, writable=True)
    except StoreError:  # a writer holds the lock
        return load_graphs(store, catalogue, writable=False)


def refresh_graphs(store: Store) -> None:
    """Rebuild the structures that are missing or stale, and save them (the caller holds the writer lock)."""
    load_graphs(store, store.load_all(), writable=True)
