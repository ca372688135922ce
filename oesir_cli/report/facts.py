"""What a report says about a photo file as found: hash, size, pixels, format and EXIF, never judged."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from ..registry import sha256_file

EXIF_IFD = 0x8769  # the Exif sub-IFD, where the capture date lives
# (label, IFD, tag): the fields a reader of a case file looks for, in the order shown
EXIF_FIELDS: tuple[tuple[str, int | None, int], ...] = (
    ("camera make", None, 0x010F),
    ("camera model", None, 0x0110),
    ("date taken", EXIF_IFD, 0x9003),
    ("date digitized", EXIF_IFD, 0x9004),
    ("date modified", None, 0x0132),
    ("software", None, 0x0131),
    ("artist", None, 0x013B),
    ("orientation", None, 0x0112),
    ("lens model", EXIF_IFD, 0xA434),
)
GPS_IFD = 0x8825
MAX_FIELD_CHARS = 200  # an EXIF string is shown as found, up to this length


@dataclass(frozen=True)
class PhotoFacts:
    """A file's identity and what its header says. `error` is set when it is not a readable image."""

    path: str
    sha256: str | None  # None: the bytes could not be read
    bytes: int | None
    width: int | None = None  # as stored, before any EXIF rotation
    height: int | None = None
    format: str | None = None
    mode: str | None = None
    exif: dict[str, str] = field(default_factory=dict)  # label -> value as found
    error: str | None = None

    def as_dict(self) -> dict:
        return asdict(self)


def photo_facts(path: str | os.PathLike) -> PhotoFacts:
    """Hash and describe the file at `path`; problems go into `error`, nothing raises."""
    p = Path(path)
    try:
        size = p.stat().st_size
        digest = sha256_file(p)
    except OSError as exc:
        return PhotoFacts(str(p), None, None, error=f"cannot read the file ({exc.strerror or exc})")
    try:
        with Image.open(p) as im:
            return PhotoFacts(str(p), digest, size, im.width, im.height, im.format, im.mode, _exif(im))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return PhotoFacts(str(p), digest, size, error=f"not a readable image ({msg})")


def _exif(im: Image.Image) -> dict[str, str]:
    try:
        exif = im.getexif()
    except Exception:  # a broken EXIF block is reported as absent, the photo is still described
        return {}
    found: dict[str, str] = {}
    for label, ifd, tag in EXIF_FIELDS:
        try:
            value = (exif.get_ifd(ifd) if ifd is not None else exif).get(tag)
        except Exception:
            value = None
        if value is not None:
            found[label] = _text(value)
    try:
        has_gps = bool(exif.get_ifd(GPS_IFD))
    except Exception:
        has_gps = False
    if has_gps:
        found["GPS"] = "present in EXIF"
    return found


def _text(value: object) -> str:
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    text = str(value).replace("\x00", "").strip()
    return text if len(text) <= MAX_FIELD_CHARS else text[:MAX_FIELD_CHARS] + "…"
