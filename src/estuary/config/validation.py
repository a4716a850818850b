"""One-line messages for pydantic validation errors: the dotted field, what is wrong, and for an unknown key
the closest known one (did you mean …?)."""

from __future__ import annotations

import difflib
from typing import Any

from pydantic import BaseModel, ValidationError


def _field_hint(model: type[BaseModel], loc: tuple[Any, ...]) -> tuple[str, str]:
    """Return (dotted field name, a hint) for an unknown key at `loc`."""
    cls: Any = model
    for p in loc[:-1]:
        field = cls.model_fields.get(p) if isinstance(cls, type) and issubclass(cls, BaseModel) else None
        if field is None:
            break
        cls = field.annotation
    name = str(loc[-1])
    known = list(cls.model_fields) if isinstance(cls, type) and issubclass(cls, BaseModel) else []
    close = difflib.get_close_matches(name, known, n=1)
    if close:
        return ".".join(map(str, loc)), f"did you mean '{close[0]}'?"
    return ".".join(map(str, loc)), f"known keys here: {', '.join(known)}" if known else "remove it"


def format_validation_error(err: ValidationError, source: str, model: type[BaseModel]) -> str:
    e = err.errors()[0]
    loc = tuple(e["loc"])
    where = ".".join(str(p) for p in loc) or "(top level)"
    if e["type"] == "extra_forbidden":
        where, hint = _field_hint(model, loc)
        return f"{source}: unknown key '{where}' — {hint}"
    msg = e["msg"].removeprefix("Value error, ")
    got = e.get("input")
    got_s = "" if isinstance(got, dict) else f" (got {got!r})"
    return f"{source}: field '{where}': {msg}{got_s}"
