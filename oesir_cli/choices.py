"""The named choices of the API, shared by the Python API (which validates them) and the CLI (which offers them).

Each is a `str` enum, so `Mode("fused") == "fused"` and JSON output is unchanged.
"""

from __future__ import annotations

from enum import Enum


class Mode(str, Enum):
    """How `search` ranks: both kinds of evidence (default), the paper's objects alone, or keypoint votes alone."""

    FUSED = "fused"
    OBJECTS = "objects"
    LOCAL = "local"


class Relation(str, Enum):
    """What ORIGINAL is to QUERY in `localize`: detected (auto), the host photo, or a donor."""

    AUTO = "auto"
    HOST = "host"
    DONOR = "donor"


class ModelKind(str, Enum):
    """Which network describes photos: the two-pass teacher path, or the distilled single-pass student."""

    TEACHER = "teacher"
    STUDENT = "student"


class Precision(str, Enum):
    """The numbers the two-pass networks of a new index compute with: int8 copies (the default, ~2.5x faster on
    CPUs with int8 dot products) or the float networks they were made from."""

    INT8 = "int8"
    FLOAT = "float"


class Role(str, Enum):
    """What a ranked photo is to the query: its background, the source of a pasted part, or only a lead."""

    HOST = "host"
    DONOR = "donor"
    CANDIDATE = "candidate"


class Verdict(str, Enum):
    """What search concludes for one query: sources found, no source in the collection, or a copy of a stored photo."""

    SOURCES = "sources"
    NONE = "none"
    COPY = "copy"


def parse(enum: type[Enum], value: object, what: str) -> Enum:
    """`value` as a member of `enum`, or ValueError naming the choices (a typo never silently means something else)."""
    try:
        return enum(value.value if isinstance(value, Enum) else value)
    except ValueError:
        choices = ", ".join(str(m.value) for m in enum)
        raise ValueError(f"unknown {what} {value!r}; one of {choices}") from None
