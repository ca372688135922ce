"""The index in Milvus: the same photos, objects and local features as the embedded store, in four collections.

One client code for Milvus Lite (`milvus-lite:FILE.db`, embedded, what tests use)
and a Milvus server or cluster (`milvus://HOST:PORT/NAME`). Collections, all
named NAME_<what>:

* `photos`: one row per photo: path, sha256, size, mtime, pixel size, keypoint
  count, `status`, and its whole-image embedding (the vector Milvus requires;
  it is what host search compares). A photo is visible only once its row has
  status VISIBLE, written after all its other rows: a crash in between leaves
  rows no visible photo owns, which the next write of that photo deletes
  first, and `oesir check --repair` removes.
* `objects`: one row per object (the whole image first): photo id, object
  number, box, embedding. Eq. 7 is a grouped search: each query object's
  nearest object per photo (`group_by_field="photo"`), the minimum taken here.
* `lists`: the inverted lists of the embedded index (local_index.py), in
  Milvus: segments of rows of keypoint entries (visual word, the writing of the
  photo they belong to, 16-byte PQ residual code, norm, 6-byte geometry: 35
  bytes each, base64 in a VARCHAR). A query's keypoints read exactly the lists
  they probe, from every photo, and score them with the embedded index's code,
  so both back ends find the same neighbours. Each committed batch writes a
  new segment of a few rows in word order (`word` = BATCH_ROW), read whole by a
  search (a few batches at most); `FANOUT` segments of one level are merged into
  one of the next (up to MAX_MERGE_LEVEL), whose rows hold one word each, so a
  probe reads only its words' rows. Which segments are live is one meta row,
  changed in one write: rows of a segment not (or no longer) live are never read.
* `meta`: key/value settings (engine configuration, model version); its
  2-dimensional vector is unused (Milvus requires one per collection).

Photo ids are the first 63 bits of sha256(path): a re-run writes a photo under
the same id, so nothing is ever indexed twice. Each writing of a photo has a
new `serial` (its segment and place in the batch), stored with its photo row
and with each of its keypoint entries: entries whose serial is not a visible
photo's (the photo was rewritten, removed, or its write interrupted) are dead,
skipped by search and dropped by the next merge.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import shutil
import socket
import time
import uuid
from collections import Counter, OrderedDict
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import StoreError
from .location import LITE_PREFIX, IndexLocation
from .postings import GEOMETRY, pack_geometry
from .registry import WeightsError, verified_file
from .store import ImageRecord, PhotoData
from .vocabulary import VOCABULARY_FILE, Vocabulary, as_float

os.environ.setdefault("GRPC_VERBOSITY", "NONE")  # gRPC's own lines (keepalive GOAWAYs) are not the user's business
PENDING, VISIBLE = 0, 1
MAX_PATH = 4096
MAX_TEXT = 65535  # Milvus's VARCHAR limit
ENTRIES_PER_ROW = 1400  # 35-byte entries, base64 (4/3): 65,336 characters, under MAX_TEXT
BATCH_ROW = -1  # the `word` of a row of a batch's segment (level 0): entries of several words
PATH_QUERY_BATCH = 256  # ids per `in [...]` filter
PAGE = 4096  # rows per query_iterator page
MAX_TOPK = 16384  # Milvus's largest limit per search
FANOUT = 8  # segments of one level merged into one of the next (as the embedded index's segment files)
# Segments stop growing at 16 x 8^3 = 8,192 photos: a word then holds ~360 entries in each (720 keypoints a photo,
# 16,384 words), a quarter of a row, so merging further would no longer cut the rows a probe reads.
MAX_MERGE_LEVEL = 3
SERIALS_PER_SEGMENT = 2**20  # a photo's serial: segment x this + its place in the batch
WORDS_PER_QUERY = 512  # probed words per `word in [...]` query of the lists
MAX_QUERY_ROWS = 16384  # Milvus's largest limit per query
LIST_CACHE_ENTRIES = 4_000_000  # decoded list entries kept per process (~130 MB): a query's orientations and regions
INSERT_BYTES = 16 * 2**20  # rows per insert call, in base64 characters (a gRPC message is at most 64 MB)
UNUSED = [0.0, 0.0]  # the vector Milvus requires in collections that have none
INDEX_TYPES = ("FLAT", "HNSW", "IVF_FLAT", "IVF_SQ8", "IVF_PQ")  # IVF_PQ: servers only (Milvus Lite lacks it)
DEFAULT_INDEX_TYPE = "HNSW"
WRITER_LEASE_S = 600  # a writer renews its lease at every batch; one silent this long is taken for dead
WRITER_KEY = "writer"  # the meta row holding the lease


COLLECTIONS = ("meta", "photos", "objects", "lists")
OLD_COLLECTIONS = ("local",)  # an older layout's, removed by --rebuild
_LITE_OPEN: Counter[str] = Counter()  # open stores per Milvus Lite file in this process


def photo_id(path: str) -> int:
    """A photo's id: the first 63 bits of sha256(path) (collisions are detected when writing)."""
    return int.from_bytes(hashlib.sha256(path.encode("utf-8", "surrogateescape")).digest()[:8], "big") >> 1


def entry_dtype(code_size: int) -> np.dtype:
    """One stored keypoint in a list row: its visual word, the serial of its photo's writing, PQ code, norm,
    geometry."""
    return np.dtype([("word", "<i4"), ("serial", "<i8"), ("code", "u1", (code_size,)), ("norm", "u1"), ("geometry", GEOMETRY)])


@dataclass(frozen=True)
class PhotoRows:
    """The visible photos, sorted by id: what search numbers 0..P-1."""

    ids: np.ndarray  # [P] int64
    paths: list[str]
    sha256: list[str]
    keypoints: np.ndarray  # [P] stored local entries per photo
    serials: np.ndarray  # [P] int64 the serial of each photo's current writing


@dataclass(frozen=True)
class ObjectHit:
    query: int  # the query object
    photo: int  # photo id
    row: int  # the object's row id
    distance: float  # squared L2
    box: tuple[float, float, float, float]


def _client(location: IndexLocation):  # noqa: ANN202 - pymilvus is optional
    try:
        from pymilvus import MilvusClient

        # its warnings (client-side timestamps) and RPC error logs are not the user's: a failed call becomes one StoreError line
        logging.getLogger("pymilvus").setLevel(logging.CRITICAL)
    except ImportError:
        raise StoreError(f"{location.text}: the Milvus back end needs `pip install 'oesir[cluster]'`") from None
    try:
        return _Guarded(MilvusClient(uri=location.uri, token=os.environ.get("OESIR_MILVUS_TOKEN", "")), location.text)
    except Exception as exc:  # pymilvus raises its own exception types for an unreachable server
        if location.text.startswith(LITE_PREFIX) and os.path.exists(location.uri or ""):
            raise StoreError(
                f"cannot open {location.text}: a Milvus Lite file is open to one process at a time (is another oesir "
                "using it?); to share it, serve it with `milvus-lite server` and use milvus://HOST:PORT/NAME"
            ) from None
        raise StoreError(f"cannot reach Milvus at {location.text}: {_first_line(exc)}") from None


def _first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "message", "") or exc)
    return text.splitlines()[0] if text else type(exc).__name__


class _Guarded:
    """The Milvus client, its errors turned into one-line StoreErrors naming the index."""

    def __init__(self, client: Any, where: str):
        self._client, self._where = client, where

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._client, name)
        if not callable(method):
            return method

        def call(*args: Any, **kwargs: Any) -> Any:
            try:
                return method(*args, **kwargs)
            except StoreError:
                raise
            except Exception as exc:  # MilvusException, grpc errors: the server's message, one line
                raise StoreError(f"Milvus at {self._where}: {name} failed: {_first_line(exc)}") from None

        return call


class MilvusStore:
    """An oesir index in Milvus. Readers and one writer at a time (the writer is the `oesir index` driver)."""

    def __init__(self, location: IndexLocation, create: bool = False):
        self.location = location.text
        self.name = location.name
        self.client = _client(location)
        self._closed = False
        self._lite = location.uri if location.text.startswith(LITE_PREFIX) else None
        if self._lite is not None:
            _LITE_OPEN[self._lite] += 1
        self._vocabulary: Vocabulary | None = None
        self._lists: OrderedDict[int, np.ndarray] = OrderedDict()  # word -> its merged segments' entries, LRU
        self._batches = np.zeros(0)  # the entries of the live batches' segments
        self._lists_of: str | None = None  # the live segments `_lists` and `_batches` were read from
        self._owner: str | None = None  # this process's writer lease, inside `writing`
        if not self.client.has_collection(self._c("meta")):
            if not create:
                self.close()
                raise StoreError(f"no index at {location.text} (run `oesir index PATH --index {location.text}` first)")
        elif self.outdated() and not create:
            self.close()
            raise StoreError(self.outdated_message())
        # A new client finds collections released. Load every one there is, also without meta: a run killed
        # while creating them leaves some, which `create` keeps and the rerun then writes to.
        for what in (*COLLECTIONS, *OLD_COLLECTIONS):
            if self.client.has_collection(self._c(what)):
                self.client.load_collection(self._c(what))

    def outdated(self) -> bool:
        """Whether the index was written by an older oesir (keypoints per photo, no lists): it must be rebuilt."""
        return self.client.has_collection(self._c("meta")) and not self.client.has_collection(self._c("lists"))

    def outdated_message(self) -> str:
        return (
            f"index at {self.location} was written by an older oesir (keypoints stored per photo); rebuild it: "
            f"oesir index PHOTOS --index {self.location} --rebuild"
        )

    def _c(self, what: str) -> str:
        return f"{self.name}_{what}"

    # the one writer -------------------------------------------------------------------------------------------------
    @contextmanager
    def writing(self) -> Iterator[None]:
        """Hold the index's writer lease for the block: a second `oesir index` or `check --repair` is refused.

        Milvus has no lock and no compare-and-swap, so the lease is a meta row
        (owner, host, pid, last renewal) read back after it is written; a
        writer renews it at every batch. A lease whose process is gone (same
        host) or that has not been renewed for WRITER_LEASE_S is taken over.
        """
        self._owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex}"
        self._acquire()
        try:
            yield
        finally:
            self._release()

    def writer(self) -> dict | None:
        """The live lease of another process writing this index, or None."""
        held = self._lease()
        if held is None or held.get("owner") == self._owner or _lease_dead(held):
            return None
        return held

    def _lease(self) -> dict | None:
        raw = self.meta(WRITER_KEY)
        return json.loads(raw) if raw else None

    def _acquire(self) -> None:
        if not self.exists():  # nothing written yet: `create` comes first and calls this again
            return
        held = self.writer()
        if held is not None:
            raise StoreError(busy_message(self.location, held))
        self.renew_lease(since=time.time())
        if (self._lease() or {}).get("owner") != self._owner:  # another writer's lease landed in between
            raise StoreError(busy_message(self.location, self._lease() or {}))

    def renew_lease(self, since: float | None = None) -> None:
        """Write (or refresh) this process's lease; a no-op outside `writing`."""
        owner = self._owner
        if owner is None or not self.exists():
            return
        held = self._lease() or {}
        now = time.time()
        start = since if since is not None else held.get("since", now)
        lease = {"owner": owner, "host": socket.gethostname(), "pid": os.getpid(), "since": start, "renewed": now}
        self.set_meta(WRITER_KEY, json.dumps(lease))

    def _release(self) -> None:
        if self._closed or not self.exists():
            return
        if (self._lease() or {}).get("owner") == self._owner:
            self.client.delete(self._c("meta"), filter=f"key == {json.dumps(WRITER_KEY)}")
        self._owner = None

    # settings -----------------------------------------------------------------------------------------------------
    def exists(self) -> bool:
        return self.client.has_collection(self._c("meta"))

    def create(self, dim: int, index_type: str = DEFAULT_INDEX_TYPE) -> None:
        """Create the four collections (nothing if they exist): embeddings of `dim`, vector index `index_type`."""
        from pymilvus import DataType

        if index_type not in INDEX_TYPES:
            raise StoreError(f"unknown Milvus index type {index_type!r}; one of {', '.join(INDEX_TYPES)}")
        c = self.client
        v = text = DataType.VARCHAR
        specs = {
            "meta": [
                ("key", v, {"max_length": 256, "is_primary": True}),
                ("value", text, {"max_length": MAX_TEXT}),
                ("unused", DataType.FLOAT_VECTOR, {"dim": 2}),
            ],
            "photos": [
                ("id", DataType.INT64, {"is_primary": True}),
                ("path", v, {"max_length": MAX_PATH}),
                ("sha256", v, {"max_length": 64}),
                ("size", DataType.INT64, {}),
                ("mtime_ns", DataType.INT64, {}),
                ("width", DataType.INT32, {}),
                ("height", DataType.INT32, {}),
                ("keypoints", DataType.INT32, {}),
                ("serial", DataType.INT64, {}),
                ("status", DataType.INT8, {}),
                ("whole", DataType.FLOAT_VECTOR, {"dim": dim}),
            ],
            "objects": [
                ("id", DataType.INT64, {"is_primary": True, "auto_id": True}),
                ("photo", DataType.INT64, {}),
                ("object", DataType.INT32, {}),
                *[(name, DataType.FLOAT, {}) for name in ("x1", "y1", "x2", "y2")],
                ("embedding", DataType.FLOAT_VECTOR, {"dim": dim}),
            ],
            "lists": [
                ("id", DataType.INT64, {"is_primary": True, "auto_id": True}),
                ("segment", DataType.INT64, {}),
                ("word", DataType.INT32, {}),
                ("entries", text, {"max_length": MAX_TEXT}),
                ("unused", DataType.FLOAT_VECTOR, {"dim": 2}),
            ],
        }
        vectors = {"meta": ("unused", "FLAT", "L2"), "photos": ("whole", index_type, "L2"),
                   "objects": ("embedding", index_type, "L2"), "lists": ("unused", "FLAT", "L2")}  # fmt: skip
        scalars = {"lists": ("segment", "word")}  # what a probe filters on
        for what in ("lists", "objects", "photos", "meta"):  # meta last: its existence says the rest exists
            params = c.prepare_index_params()
            field, kind, metric = vectors[what]
            params.add_index(field, index_type=kind, metric_type=metric, params=_build_params(kind))
            for name in scalars.get(what, ()):
                params.add_index(name, index_type="INVERTED")
            if c.has_collection(self._c(what)):  # left by a run killed while creating: finish it
                if not c.list_indexes(self._c(what)):  # killed between creating the collection and its index
                    c.release_collection(self._c(what))
                    c.create_index(self._c(what), params)
                c.load_collection(self._c(what))
                continue
            self._remove_half_created(what)
            schema = c.create_schema(auto_id=what in ("objects", "lists"), enable_dynamic_field=False)
            for name, dtype, kw in specs[what]:
                schema.add_field(name, dtype, **kw)
            c.create_collection(self._c(what), schema=schema, index_params=params, consistency_level="Strong")
        if self.meta("index_type") is None:
            self.set_meta("index_type", index_type)
        if self._owner is not None and self._lease() is None:
            self._acquire()

    def _remove_half_created(self, what: str) -> None:
        """Milvus Lite killed while creating a collection leaves its folder without listing it; it then refuses
        to create it again ("File exists"). A folder of a collection it does not list holds nothing of ours."""
        if self._lite is None:
            return
        leftover = Path(self._lite) / "collections" / self._c(what)
        if leftover.is_dir() and not self.client.has_collection(self._c(what)):
            shutil.rmtree(leftover)

    def drop(self) -> None:
        """Remove every collection of this index (`--rebuild`)."""
        for what in (*COLLECTIONS, *OLD_COLLECTIONS):
            if self.client.has_collection(self._c(what)):
                self.client.drop_collection(self._c(what))
        self._lists.clear()

    def meta(self, key: str, default: str | None = None) -> str | None:
        if not self.client.has_collection(self._c("meta")):
            return default
        rows = self.client.query(self._c("meta"), filter=f"key == {json.dumps(key)}", output_fields=["value"])
        return rows[0]["value"] if rows else default

    def set_meta(self, key: str, value: str) -> None:
        self.client.upsert(self._c("meta"), [{"key": key, "value": value, "unused": [0.0, 0.0]}])

    @property
    def generation(self) -> int:
        return int(self.meta("generation", "0") or 0)

    def check_model(self, model_version: str, create: bool, equivalent: Collection[str] = ()) -> None:
        """As `Store.check_model`: refuse another model version, accept (and restamp when writing) an equivalent."""
        have = self.meta("model_version")
        if (have is None or have in equivalent) and create:
            self.set_meta("model_version", model_version)
        elif have is not None and have != model_version and have not in equivalent:
            raise StoreError(
                f"index at {self.location} was built with model {have}, not {model_version}; re-index with `--rebuild`"
            )

    def embedding_dim(self) -> int:
        return int(self.meta("embedding_dim", "0") or 0)

    def vocabulary(self) -> Vocabulary:
        if self._vocabulary is None:
            try:
                path, _ = verified_file(VOCABULARY_FILE)
            except WeightsError as exc:
                raise StoreError(f"index at {self.location} needs the local-feature vocabulary: {exc}") from None
            self._vocabulary = Vocabulary.load(path)
        return self._vocabulary

    # writing (indexer.IndexWriter) -------------------------------------------------------------------------------
    def images(self) -> dict[str, ImageRecord]:
        """Visible photos by path."""
        out = {}
        for r in self._scan("photos", f"status == {VISIBLE}", ["id", "path", "sha256", "size", "mtime_ns", "width", "height"]):
            out[r["path"]] = ImageRecord(r["id"], r["path"], r["sha256"], r["size"], r["mtime_ns"], r["width"], r["height"])
        return out

    def commit(self, batch: list[tuple[ImageRecord, PhotoData | None]]) -> None:
        """Write a batch: records only for `None` data; else hide the photo, replace its object rows, write its
        keypoints as a new segment of the lists, make that segment live, show the photo again; then merge."""
        touched = [rec for rec, data in batch if data is None]
        described = [(rec, data) for rec, data in batch if data is not None]
        if touched:
            rows = self._get_photos([photo_id(r.path) for r in touched], full=True)
            by_id = {r["id"]: r for r in rows}
            ids = [photo_id(r.path) for r in touched]
            rows = [{**by_id[i], "size": r.size, "mtime_ns": r.mtime_ns} for r, i in zip(touched, ids) if i in by_id]
            self.client.upsert(self._c("photos"), rows)
        if not described:
            return
        ids = [photo_id(rec.path) for rec, _ in described]
        self._refuse_collisions(described, ids)
        segment = self._new_segment()
        serials = [segment * SERIALS_PER_SEGMENT + i for i in range(len(described))]
        photos = [self._photo_row(rec, data, pid, serial, PENDING) for (rec, data), pid, serial in zip(described, ids, serials)]
        self.client.upsert(self._c("photos"), photos)  # hidden while its rows change
        self._delete_rows(ids)
        objects, records = [], []
        for (_, data), pid, serial in zip(described, ids, serials):
            for j, (box, emb) in enumerate(zip(np.asarray(data.boxes, np.float32), np.asarray(data.embeddings, np.float32))):
                x1, y1, x2, y2 = (float(v) for v in box)
                objects.append({"photo": pid, "object": j, "x1": x1, "y1": y1, "x2": x2, "y2": y2, "embedding": emb.tolist()})
            records.append(self._entries_of(serial, data))
        if objects:
            self.client.insert(self._c("objects"), objects)
        self._write_segment(segment, np.concatenate(records), by_word=False)
        self._set_segments([*self.segments(), (segment, 0)])  # its entries count once their photos are visible
        for row in photos:
            row["status"] = VISIBLE
        self.client.upsert(self._c("photos"), photos)  # the batch becomes visible
        self.set_meta("generation", str(self.generation + 1))
        self._merge()
        self.renew_lease()

    def _refuse_collisions(self, described: list[tuple[ImageRecord, PhotoData]], ids: list[int]) -> None:
        have = {r["id"]: r["path"] for r in self._get_photos(ids)}
        for (rec, _), pid in zip(described, ids):
            if pid in have and have[pid] != rec.path:
                raise StoreError(f"photo id collision between {rec.path} and {have[pid]}; report this to oesir's maintainers")

    def _photo_row(self, rec: ImageRecord, data: PhotoData, pid: int, serial: int, status: int) -> dict:
        whole = np.asarray(data.embeddings[0], np.float32)
        return {
            "id": pid, "path": rec.path, "sha256": rec.sha256, "size": rec.size, "mtime_ns": rec.mtime_ns,
            "width": rec.width, "height": rec.height, "keypoints": int(len(data.descriptors)), "serial": serial,
            "status": status, "whole": whole.tolist(),
        }  # fmt: skip

    def _entries_of(self, serial: int, data: PhotoData) -> np.ndarray:
        """A photo's keypoints coded as the embedded index codes them (`entry_dtype` records)."""
        vocabulary = self.vocabulary()
        records = np.zeros(len(data.descriptors), entry_dtype(vocabulary.code_size))
        if len(records) == 0:
            return records
        x = as_float(data.descriptors)
        words = vocabulary.nearest_words(x)[:, 0]
        codes = vocabulary.encode(x, words)
        records["word"], records["serial"], records["code"] = words, serial, codes
        records["norm"], records["geometry"] = vocabulary.norms(words, codes), pack_geometry(data.keypoints)
        return records

    # the lists: segments of rows, merged as an LSM tree ----------------------------------------------------------------
    def segments(self) -> list[tuple[int, int]]:
        """The live segments of the lists: (segment, level), oldest first."""
        return [(int(a), int(b)) for a, b in json.loads(self.meta("segments", "[]") or "[]")]

    def _set_segments(self, segments: list[tuple[int, int]]) -> None:
        self.set_meta("segments", json.dumps([[a, b] for a, b in segments]))  # one write: rows change liveness at once

    def _new_segment(self) -> int:
        """A segment number never used before in this index (a number taken by an interrupted write is skipped)."""
        number = int(self.meta("next_segment", "1") or 1)
        self.set_meta("next_segment", str(number + 1))
        return number

    def _write_segment(self, segment: int, records: np.ndarray, by_word: bool) -> None:
        """The rows of `segment`: its entries sorted by word then serial, ENTRIES_PER_ROW a row; `by_word`: each
        row holds one word (a merged segment, read by word), else rows span words (a batch's, read whole)."""
        records = records[np.lexsort((records["serial"], records["word"]))]
        words = records["word"]
        if by_word:
            starts = np.flatnonzero(np.r_[True, words[1:] != words[:-1]]) if len(words) else np.zeros(0, np.int64)
        else:
            starts = np.zeros(min(1, len(words)), np.int64)
        ends = np.r_[starts[1:], len(words)].astype(np.int64)
        rows, size = [], 0
        for a, b in zip(starts.tolist(), ends.tolist()):
            for lo in range(a, b, ENTRIES_PER_ROW):
                text = base64.b64encode(records[lo : min(lo + ENTRIES_PER_ROW, b)].tobytes()).decode("ascii")
                word = int(words[a]) if by_word else BATCH_ROW
                rows.append({"segment": segment, "word": word, "entries": text, "unused": UNUSED})
                size += len(text)
                if size >= INSERT_BYTES:
                    self.client.insert(self._c("lists"), rows)
                    rows, size = [], 0
        if rows:
            self.client.insert(self._c("lists"), rows)

    def _merge(self) -> None:
        """While FANOUT live segments share a level below MAX_MERGE_LEVEL: write their live entries as one segment
        of the next level, make it live in their place, then delete their rows. Interrupted anywhere, the live
        set names either the old segments or the new one, never both; `repair` removes the other's rows."""
        segments = self.segments()
        while True:
            counts = Counter(level for _, level in segments if level < MAX_MERGE_LEVEL)
            full = sorted(level for level, n in counts.items() if n >= FANOUT)
            if not full:
                return
            chosen = [seg for seg, level in segments if level == full[0]][:FANOUT]
            records = self._read_rows(f"segment in {chosen}")
            live = np.isin(records["serial"], self._visible_serials(np.unique(records["serial"])))
            merged = self._new_segment()
            self._write_segment(merged, records[live], by_word=True)
            segments = [s for s in segments if s[0] not in chosen] + [(merged, full[0] + 1)]
            self._set_segments(segments)
            self.client.delete(self._c("lists"), filter=f"segment in {chosen}")

    def _read_rows(self, filter: str) -> np.ndarray:
        """The entries (`entry_dtype` records) of every list row `filter` selects."""
        dtype = entry_dtype(self.vocabulary().code_size)
        chunks = [np.frombuffer(base64.b64decode(r["entries"]), dtype) for r in self._scan("lists", filter, ["entries"])]
        return np.concatenate(chunks) if chunks else np.zeros(0, dtype)

    def _visible_serials(self, serials: np.ndarray) -> np.ndarray:
        """Those of `serials` that are the current writing of a visible photo."""
        found = []
        values = [int(v) for v in serials]
        for lo in range(0, len(values), PATH_QUERY_BATCH):
            part = values[lo : lo + PATH_QUERY_BATCH]
            rows = self.client.query(
                self._c("photos"), filter=f"status == {VISIBLE} and serial in {part}", output_fields=["serial"]
            )
            found += [int(r["serial"]) for r in rows]
        return np.array(found, np.int64)

    def _delete_rows(self, ids: list[int]) -> None:
        for lo in range(0, len(ids), PATH_QUERY_BATCH):
            part = ids[lo : lo + PATH_QUERY_BATCH]
            self.client.delete(self._c("objects"), filter=f"photo in {part}")

    def delete(self, paths: list[str]) -> None:
        """Hide, then remove, the photos at `paths`."""
        ids = [photo_id(p) for p in paths]
        for lo in range(0, len(ids), PATH_QUERY_BATCH):
            self.client.delete(self._c("photos"), filter=f"id in {ids[lo : lo + PATH_QUERY_BATCH]}")
        self._delete_rows(ids)
        self.set_meta("generation", str(self.generation + 1))

    def finish(self) -> None:
        for what in COLLECTIONS:
            self.client.flush(self._c(what))

    def count(self) -> tuple[int, int]:
        """(visible photos, object rows)."""
        photos = self._count("photos", f"status == {VISIBLE}")
        return photos, self._count("objects", "")

    # reading (search) ------------------------------------------------------------------------------------------------
    def photo_rows(self) -> PhotoRows:
        fields = ["id", "path", "sha256", "keypoints", "serial"]
        rows = sorted(self._scan("photos", f"status == {VISIBLE}", fields), key=lambda r: r["id"])
        return PhotoRows(
            np.array([r["id"] for r in rows], np.int64),
            [r["path"] for r in rows],
            [r["sha256"] for r in rows],
            np.array([r["keypoints"] for r in rows], np.int64),
            np.array([r["serial"] for r in rows], np.int64),
        )

    def sha256_of(self, image_ids: list[int]) -> dict[int, str]:
        return {r["id"]: r["sha256"] for r in self._get_photos(image_ids)}

    def search_objects(self, embeddings: np.ndarray, limit: int) -> list[ObjectHit]:
        """Each query object's nearest object in each of its `limit` nearest photos."""
        res = self.client.search(
            self._c("objects"),
            data=np.asarray(embeddings, np.float32).tolist(),
            anns_field="embedding",
            limit=min(limit, MAX_TOPK),
            group_by_field="photo",
            group_size=1,
            output_fields=["photo", "x1", "y1", "x2", "y2"],
            search_params={"metric_type": "L2", "params": {"ef": max(2 * limit, 64), "nprobe": 64}},
        )
        hits = []
        for q, found in enumerate(res):
            for h in found:
                e = h["entity"]
                box = (e["x1"], e["y1"], e["x2"], e["y2"])
                hits.append(ObjectHit(q, int(e["photo"]), int(h["id"]), float(h["distance"]), box))
        return hits

    def search_whole(self, embedding: np.ndarray, limit: int) -> list[tuple[int, float]]:
        """(photo id, squared L2) of the `limit` visible photos whose whole image is nearest."""
        res = self.client.search(
            self._c("photos"),
            data=[np.asarray(embedding, np.float32).tolist()],
            anns_field="whole",
            limit=min(limit, MAX_TOPK),
            filter=f"status == {VISIBLE}",
            output_fields=["id"],
            search_params={"metric_type": "L2", "params": {"ef": max(2 * limit, 64), "nprobe": 64}},
        )
        return [(int(h["id"]), float(h["distance"])) for h in res[0]]

    def list_entries(self, words: np.ndarray) -> np.ndarray:
        """Every entry, dead or live, of the live segments' lists `words` (what a query's keypoints probe), as
        `entry_dtype` records sorted by word then serial.

        Merged segments are read WORDS_PER_QUERY words a query; batches' segments
        (fewer than FANOUT a level) are read whole. What was decoded is kept (merged
        lists LRU, up to LIST_CACHE_ENTRIES entries) while the live segments stay
        the same: a query's mirror image and regions probe many of the same words.
        """
        live = self.meta("segments", "[]") or "[]"
        segments = json.loads(live)  # one reading of the live set for the whole call
        dtype = entry_dtype(self.vocabulary().code_size)
        if live != self._lists_of:
            self._lists.clear()
            self._lists_of = live
            batches = [int(seg) for seg, level in segments if level == 0]
            self._batches = self._read_rows(f"segment in {batches}") if batches else np.zeros(0, dtype)
        merged = [int(seg) for seg, level in segments if level > 0]
        words = np.unique(np.asarray(words, np.int64))
        want = [int(w) for w in words if int(w) not in self._lists] if merged else []
        for lo in range(0, len(want), WORDS_PER_QUERY):
            part = want[lo : lo + WORDS_PER_QUERY]
            where = f"segment in {merged} and word in {part}"
            rows = self.client.query(self._c("lists"), filter=where, output_fields=["entries"], limit=MAX_QUERY_ROWS)
            if len(rows) >= MAX_QUERY_ROWS:  # long lists (a large collection): page through them
                rows = list(self._scan("lists", where, ["entries"]))
            found = [np.frombuffer(base64.b64decode(r["entries"]), dtype) for r in rows]
            records = np.concatenate(found) if found else np.zeros(0, dtype)
            records = records[np.lexsort((records["serial"], records["word"]))]
            cuts = np.searchsorted(records["word"], part + [part[-1] + 1])
            for w, a, b in zip(part, cuts[:-1], cuts[1:]):
                self._lists[w] = records[a:b]
        chunks = [self._lists[int(w)] for w in words if int(w) in self._lists]
        for w in words:
            if int(w) in self._lists:
                self._lists.move_to_end(int(w))
        held = sum(len(r) for r in self._lists.values())
        while held > LIST_CACHE_ENTRIES and len(self._lists) > len(words):
            held -= len(self._lists.popitem(last=False)[1])
        batch = self._batches[np.isin(self._batches["word"], words)]
        out = np.concatenate([*chunks, batch]) if chunks or len(batch) else np.zeros(0, dtype)
        return out[np.lexsort((out["serial"], out["word"]))]

    def content(self) -> list[tuple]:
        """Everything stored per visible photo, by path, ids and row order left out: equal content, equal index
        (and a duplicated row shows as a difference)."""
        objects: dict[int, list[tuple]] = {}
        fields = ["photo", "object", "x1", "y1", "x2", "y2", "embedding"]
        for r in self._scan("objects", "", fields):
            emb = np.asarray(r["embedding"], np.float32).tobytes()
            objects.setdefault(int(r["photo"]), []).append((r["object"], r["x1"], r["y1"], r["x2"], r["y2"], emb))
        live = [seg for seg, _ in self.segments()]
        records = self._read_rows(f"segment in {live}") if live else np.zeros(0, entry_dtype(self.vocabulary().code_size))
        local: dict[int, list[bytes]] = {}  # serial -> its entries (less the serial), as a multiset
        rest = [name for name in records.dtype.names if name != "serial"]
        for serial, rec in zip(records["serial"].tolist(), records[rest].tolist()):
            local.setdefault(serial, []).append(repr(rec).encode())
        fields = ["id", "path", "sha256", "size", "mtime_ns", "width", "height", "keypoints", "serial", "whole"]
        rows = []
        for r in self._scan("photos", f"status == {VISIBLE}", fields):
            whole = np.asarray(r["whole"], np.float32).tobytes()
            pid = r["id"]
            rows.append((r["path"], r["sha256"], r["size"], r["mtime_ns"], r["width"], r["height"], r["keypoints"], whole,
                         sorted(objects.get(pid, [])), sorted(local.get(int(r["serial"]), []))))  # fmt: skip
        return sorted(rows)

    # checking ------------------------------------------------------------------------------------------------------
    def inspect(self) -> tuple[list[tuple[int, str]], list[int], int]:
        """(visible photos with no object rows: (id, path); photos left hidden by an interrupted write; object rows
        no visible photo owns and list rows of segments that are not live)."""
        visible = {r["id"]: r["path"] for r in self._scan("photos", f"status == {VISIBLE}", ["id", "path"])}
        pending = [r["id"] for r in self._scan("photos", f"status == {PENDING}", ["id"])]
        owners: dict[int, int] = {}
        orphans = 0
        for r in self._scan("objects", "", ["photo"]):
            pid = int(r["photo"])
            if pid in visible:
                owners[pid] = owners.get(pid, 0) + 1
            else:
                orphans += 1
        orphans += self._count("lists", self._not_live())
        damaged = [(pid, path) for pid, path in visible.items() if owners.get(pid, 0) == 0]
        return damaged, pending, orphans

    def repair(self, damaged: list[int], pending: list[int]) -> int:
        """Remove damaged and half-written photos and every row no visible photo owns; returns rows removed."""
        ids = list(damaged) + list(pending)
        for lo in range(0, len(ids), PATH_QUERY_BATCH):
            self.client.delete(self._c("photos"), filter=f"id in {ids[lo : lo + PATH_QUERY_BATCH]}")
        visible = {r["id"] for r in self._scan("photos", f"status == {VISIBLE}", ["id"])}
        removed = 0
        stray = sorted({int(r["photo"]) for r in self._scan("objects", "", ["photo"])} - visible)
        for lo in range(0, len(stray), PATH_QUERY_BATCH):
            done = self.client.delete(self._c("objects"), filter=f"photo in {stray[lo : lo + PATH_QUERY_BATCH]}")
            removed += int(done.get("delete_count", 0) or 0)
        removed += self._count("lists", self._not_live())
        self.client.delete(self._c("lists"), filter=self._not_live())
        self.finish()
        return removed

    def _not_live(self) -> str:
        """A filter for the list rows of segments that are not live (an interrupted write's or merge's)."""
        live = [seg for seg, _ in self.segments()]
        return f"segment not in {live}" if live else "segment >= 0"

    # helpers ---------------------------------------------------------------------------------------------------------
    def _get_photos(self, ids: list[int], full: bool = False) -> list[dict]:
        fields = ["*"] if full else ["id", "path", "sha256"]
        out = []
        for lo in range(0, len(ids), PATH_QUERY_BATCH):
            out += self.client.query(self._c("photos"), filter=f"id in {ids[lo : lo + PATH_QUERY_BATCH]}", output_fields=fields)
        return out

    def _scan(self, what: str, filter: str, fields: list[str]) -> Iterator[dict]:
        it = self.client.query_iterator(self._c(what), batch_size=PAGE, filter=filter, output_fields=fields)
        try:
            while page := it.next():
                yield from page
        finally:
            it.close()

    def _count(self, what: str, filter: str) -> int:
        rows = self.client.query(self._c(what), filter=filter, output_fields=["count(*)"])
        return int(rows[0]["count(*)"]) if rows else 0

    def close(self) -> None:
        """Close the client; a Milvus Lite file's in-process server stops when its last store closes, so another
        process can open the file."""
        if self._closed:
            return
        self._closed = True
        self.client.close()
        if self._lite is not None:
            _LITE_OPEN[self._lite] -= 1
            if _LITE_OPEN[self._lite] <= 0:
                from milvus_lite.server_manager import server_manager_instance

                server_manager_instance.release_server(self._lite)


def busy_message(location: str, lease: dict) -> str:
    """One line: who holds the writer lease of the index at `location`, and what the user can do."""
    since = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(lease.get("since", 0)))
    quiet = max(0, int(time.time() - lease.get("renewed", 0)))
    return (
        f"{location} is being written by another oesir (pid {lease.get('pid', '?')} on {lease.get('host', '?')}, "
        f"since {since}, last batch {quiet} s ago); wait for it to finish (a writer silent for "
        f"{WRITER_LEASE_S // 60} minutes is taken for dead)"
    )


def _lease_dead(lease: dict) -> bool:
    """Whether a writer lease no longer protects anything: its process is gone (this host) or it went silent."""
    if time.time() - float(lease.get("renewed", 0)) > WRITER_LEASE_S:
        return True
    if lease.get("host") == socket.gethostname():
        try:
            os.kill(int(lease.get("pid", 0)), 0)
        except ProcessLookupError:
            return True
        except (PermissionError, ValueError):
            return False
    return False


def _build_params(kind: str) -> dict:
    return {"HNSW": {"M": 16, "efConstruction": 200}, "IVF_FLAT": {"nlist": 1024}, "IVF_SQ8": {"nlist": 1024},
            "IVF_PQ": {"nlist": 1024, "m": 32, "nbits": 8}}.get(kind, {})  # fmt: skip
