"""Inverted lists of local features on disk: segment files that are written once and memory-mapped.

A segment holds the local features of a set of photos, one entry per
keypoint, grouped by visual word (vocabulary.py): which of the segment's
photos it belongs to (2 bytes up to 65,536 photos per segment, else 4), the
PQ code of the descriptor's residual (16 bytes), the decoded descriptor's
squared norm (1 byte: what search needs to score it without decoding it) and
the keypoint's quantised geometry (6 bytes): 25 bytes per keypoint. Adding photos writes a new segment; segments
of one size class are merged into one of the next (`FANOUT` at a time, as an
LSM tree), so an index of N photos has O(log N) segments and no structure is
ever rebuilt whole. Search maps the files and reads only the lists a query
probes; in a large index it copies out what a block of query keypoints needs
from each segment and hands those pages back at once, so its resident memory
does not grow with the collection.

A segment file is immutable: a fixed-size JSON header naming its sections,
then the sections (offsets per word, the segment's photo ids, then per entry
its photo's number among them, code, norm and geometry), each 64-byte
aligned. Which segments are live, their sizes and sha256 live in SQLite
(store.py), so a half-written or damaged file is never trusted.
"""

from __future__ import annotations

import json
import mmap
from dataclasses import dataclass
from pathlib import Path

import numpy as np

MAGIC = b"OESIRIVF"
HEADER_BYTES = 4096
ALIGN = 64
FANOUT = 8  # segments of one level merged into one of the next
SEGMENT_SUFFIX = ".ivf"
# One keypoint's geometry: position in photo pixels, log2(size) in 1/16 steps, angle in 1/256 turns.
GEOMETRY = np.dtype([("xy", "<u2", (2,)), ("log_size", "u1"), ("angle", "u1")])
_SIZE_STEPS = 16.0


def pack_geometry(keypoints: np.ndarray) -> np.ndarray:
    """Keypoints [N, 4] (x, y, size, angle; photo pixels, degrees) as GEOMETRY records (6 bytes each)."""
    kp = np.asarray(keypoints, np.float64).reshape(-1, 4)
    out = np.zeros(len(kp), GEOMETRY)
    out["xy"] = np.clip(np.rint(kp[:, :2]), 0, 65535)
    out["log_size"] = np.clip(np.rint(np.log2(np.maximum(kp[:, 2], 1.0)) * _SIZE_STEPS), 0, 255)
    out["angle"] = np.rint(kp[:, 3] / 360.0 * 256.0).astype(np.int64) % 256
    return out


def unpack_geometry(geometry: np.ndarray) -> np.ndarray:
    """GEOMETRY records as keypoints [N, 4] float32 (x, y, size, angle), to the stored precision."""
    g = np.asarray(geometry)
    out = np.empty((len(g), 4), np.float32)
    out[:, :2] = g["xy"]
    out[:, 2] = np.exp2(g["log_size"] / _SIZE_STEPS)
    out[:, 3] = g["angle"] * (360.0 / 256.0)
    return out


@dataclass(frozen=True)
class Entries:
    """Local-feature entries in memory (any order): photo id, visual word, PQ code [N, M], norm, geometry."""

    image: np.ndarray  # [N] int64 photo ids
    word: np.ndarray  # [N] int64
    code: np.ndarray  # [N, M] uint8
    norm: np.ndarray  # [N] uint8 (vocabulary.Vocabulary.norms)
    geometry: np.ndarray  # [N] GEOMETRY

    def __len__(self) -> int:
        return len(self.image)


def _sections(n: int, photos: int, words: int, code_size: int) -> dict[str, tuple[np.dtype, tuple[int, ...]]]:
    """Name -> (dtype, shape) of each section of a segment of `n` entries of `photos` photos, in file order."""
    return {
        "offsets": (np.dtype(np.uint32 if n < 2**32 else np.uint64), (words + 1,)),
        "photos": (np.dtype(np.uint32), (photos,)),
        "local": (np.dtype(np.uint16 if photos <= 65536 else np.uint32), (n,)),
        "code": (np.dtype(np.uint8), (n, code_size)),
        "norm": (np.dtype(np.uint8), (n,)),
        "geometry": (GEOMETRY, (n,)),
    }


def _write_header(fh, n: int, photos: int, words: int, code_size: int) -> dict[str, int]:  # noqa: ANN001 - a binary file
    """Write the header of a segment file and size it; returns each section's byte offset."""
    layout, at = {}, HEADER_BYTES
    for name, (dtype, shape) in _sections(n, photos, words, code_size).items():
        layout[name] = {"offset": at, "dtype": dtype.descr if dtype.names else dtype.str, "shape": list(shape)}
        at += -(-int(np.prod(shape)) * dtype.itemsize // ALIGN) * ALIGN
    header = json.dumps({"format": 1, "words": words, "entries": n, "sections": layout}).encode()
    if len(header) + len(MAGIC) > HEADER_BYTES:
        raise ValueError("segment header too long")
    fh.write(MAGIC + header.ljust(HEADER_BYTES - len(MAGIC), b" "))
    fh.truncate(at)
    return {name: spec["offset"] for name, spec in layout.items()}


def write_segment(path: Path, entries: Entries, words: int) -> None:
    """Write `entries` as a segment file at `path` (the caller makes it atomic: see store.atomic_write)."""
    order = np.argsort(entries.word, kind="stable")
    photos, local = np.unique(entries.image, return_inverse=True)
    spec = _sections(len(entries), len(photos), words, entries.code.shape[1])
    offsets = np.zeros(words + 1, spec["offsets"][0])
    offsets[1:] = np.cumsum(np.bincount(entries.word, minlength=words)[:words])
    arrays = {
        "offsets": offsets,
        "photos": photos,
        "local": local[order],
        "code": entries.code[order],
        "norm": entries.norm[order],
        "geometry": entries.geometry[order],
    }
    with open(path, "wb") as fh:
        at = _write_header(fh, len(entries), len(photos), words, entries.code.shape[1])
        for name, arr in arrays.items():
            fh.seek(at[name])
            fh.write(np.ascontiguousarray(arr, spec[name][0]).tobytes())


MERGE_WORDS = 1024  # words copied at a time by `merge_into`: memory stays a small share of the segments merged


def merge_into(path: Path, sources: list[tuple[Segment, np.ndarray]]) -> int:
    """Write at `path` one segment holding the entries of `sources` whose photo is among the ids given with
    each (segment, live photo ids), list by list: memory stays about MERGE_WORDS / words of the segments
    (what a merge of the largest segments of a 10^6-photo index needs). Returns the entries written."""
    words, code_size = sources[0][0].words, sources[0][0].code.shape[1]
    masks, counts, kept = [], np.zeros(words, np.int64), []
    for seg, live_ids in sources:
        live_photo = np.isin(seg.photos, live_ids)
        mask = live_photo[np.asarray(seg.local, np.int64)] if seg.count else np.zeros(0, bool)
        running = np.r_[0, np.cumsum(mask)]
        counts += running[seg.offsets[1:]] - running[seg.offsets[:-1]]
        masks.append(mask)
        kept.append(seg.photos[live_photo])
    photos = np.unique(np.concatenate(kept)) if kept else np.zeros(0, np.int64)
    n = int(counts.sum())
    spec = _sections(n, len(photos), words, code_size)
    with open(path, "wb") as fh:
        at = _write_header(fh, n, len(photos), words, code_size)
        fh.seek(at["offsets"])
        fh.write(np.r_[0, np.cumsum(counts)].astype(spec["offsets"][0]).tobytes())
        fh.seek(at["photos"])
        fh.write(photos.astype(np.uint32).tobytes())
        written = 0
        for w0 in range(0, words, MERGE_WORDS):
            w1 = min(words, w0 + MERGE_WORDS)
            parts = []
            for (seg, _), mask in zip(sources, masks):
                lo, hi = int(seg.offsets[w0]), int(seg.offsets[w1])
                take = lo + np.flatnonzero(mask[lo:hi])
                word = np.repeat(np.arange(w0, w1), np.diff(seg.offsets[w0 : w1 + 1]))[take - lo]
                local = np.searchsorted(photos, seg.photos[np.asarray(seg.local[take], np.int64)])
                parts.append(
                    (word, local, np.asarray(seg.code[take]), np.asarray(seg.norm[take]), np.asarray(seg.geometry[take]))
                )
            word, local, code, norm, geometry = (np.concatenate(p) for p in zip(*parts))
            order = np.argsort(word, kind="stable")
            for name, arr in (("local", local), ("code", code), ("norm", norm), ("geometry", geometry)):
                dtype = spec[name][0]
                fh.seek(at[name] + written * dtype.itemsize * (code_size if name == "code" else 1))
                fh.write(np.ascontiguousarray(arr[order], dtype).tobytes())
            written += len(order)
    return n


class Segment:
    """One segment file, memory-mapped read-only (or, `in_memory`, the same lists built from entries)."""

    @classmethod
    def in_memory(cls, entries: Entries, words: int) -> Segment:
        """A segment of `entries` held in memory, never written: how search scores entries fetched from Milvus."""
        seg = cls.__new__(cls)
        order = np.argsort(entries.word, kind="stable")
        photos, local = np.unique(entries.image, return_inverse=True)
        seg.path, seg._map, seg.words, seg.count = None, None, words, len(entries)
        seg.offsets = np.r_[0, np.cumsum(np.bincount(entries.word, minlength=words)[:words])].astype(np.int64)
        seg.photos = photos.astype(np.int64)
        seg.local = local[order].astype(np.int64)
        seg.code, seg.norm, seg.geometry = entries.code[order], entries.norm[order], entries.geometry[order]
        return seg

    def __init__(self, path: Path):
        self.path = Path(path)
        with open(self.path, "rb") as fh:
            head = fh.read(HEADER_BYTES)
        if not head.startswith(MAGIC):
            raise ValueError(f"{self.path} is not a local-feature segment")
        meta = json.loads(head[len(MAGIC) :].decode())
        self.words = int(meta["words"])
        self.count = int(meta["entries"])
        # one read-only map of the whole file, sections as views of it: `release` can then hand the pages a
        # query touched back to the page cache in one call
        with open(self.path, "rb") as fh:
            self._map = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        arrays = {}
        for name, s in meta["sections"].items():
            dtype = (
                np.dtype([tuple(f) if len(f) == 2 else (f[0], f[1], tuple(f[2])) for f in s["dtype"]])
                if isinstance(s["dtype"], list)
                else np.dtype(s["dtype"])
            )
            shape = tuple(s["shape"])
            count = int(np.prod(shape))
            if s["offset"] + count * dtype.itemsize > len(self._map):
                raise ValueError(f"{self.path}: truncated segment")
            arrays[name] = np.frombuffer(self._map, dtype, count, s["offset"]).reshape(shape)
        self.offsets: np.ndarray = np.asarray(arrays["offsets"], np.int64)  # small: read into memory
        self.photos: np.ndarray = np.asarray(arrays["photos"], np.int64)  # the segment's photo ids (small)
        self.local: np.ndarray = arrays["local"]  # per entry: its photo's number in `photos`
        self.code: np.ndarray = arrays["code"]
        self.norm: np.ndarray = arrays["norm"]
        self.geometry: np.ndarray = arrays["geometry"]
        if len(self.offsets) != self.words + 1 or int(self.offsets[-1]) != self.count or len(self.local) != self.count:
            raise ValueError(f"{self.path}: inconsistent segment")

    @property
    def nbytes(self) -> int:
        """Bytes of the mapped file (0 for a segment held in memory)."""
        return 0 if self._map is None else len(self._map)

    def release(self) -> None:
        """Drop this process's mapping of the pages read so far; they stay in the page cache.

        Search calls it after each block of query keypoints: without it every list a
        process ever probed counts in its resident memory, which then grows with the
        collection (a query's probes meet most lists of a large index).
        """
        if self._map is not None and hasattr(mmap, "MADV_DONTNEED"):
            self._map.madvise(mmap.MADV_DONTNEED)

    def ranges(self, words: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For each requested word, (pair index, entry index) of every entry in its list, flattened."""
        starts, ends = self.offsets[words], self.offsets[words + 1]
        lens = ends - starts
        total = int(lens.sum())
        pair = np.repeat(np.arange(len(words)), lens)
        first = np.cumsum(lens) - lens
        entry = np.arange(total, dtype=np.int64) - np.repeat(first, lens) + np.repeat(starts, lens)
        return pair, entry

    def all_entries(self) -> Entries:
        """Every entry, in list order (for `Store.local_content`)."""
        word = np.repeat(np.arange(self.words), np.diff(self.offsets))
        image = self.photos[np.asarray(self.local, np.int64)] if self.count else np.zeros(0, np.int64)
        return Entries(image, word, np.asarray(self.code), np.asarray(self.norm), np.asarray(self.geometry))
