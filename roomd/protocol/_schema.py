"""The JSON Schema of the wire protocol (``schema.json``, draft 2020-12).

For tests, tools and client authors: the node never validates against it (the converter in
:mod:`._codec` is the reference, and the tests check that the two agree). Loading it only reads
a file shipped with the package; no validator library is imported here.
"""

from __future__ import annotations

import functools
from importlib import resources
from typing import Any, Final

import orjson

SCHEMA_FILE: Final = "schema.json"


@functools.cache
def load_schema() -> dict[str, Any]:
    """The whole schema document (cached: treat it as read-only).

    Its top level accepts any frame of either side; its ``$defs`` name every frame, payload and
    result (``clientFrame``, ``serverFrame``, ``chatMessage``, ``roomJoinResult`` ...).
    """
    raw = resources.files(__package__).joinpath(SCHEMA_FILE).read_bytes()
    schema: dict[str, Any] = orjson.loads(raw)
    return schema


def schema_for(definition: str) -> dict[str, Any]:
    """A schema document that validates one ``$defs`` entry, e.g. ``schema_for("serverFrame")``.

    Error handling: ``KeyError`` if the schema defines no such entry.
    """
    schema = load_schema()
    if definition not in schema["$defs"]:
        raise KeyError(f"schema.json defines no {definition!r}")
    return {
        "$schema": schema["$schema"],
        "$defs": schema["$defs"],
        "$ref": f"#/$defs/{definition}",
    }
