"""One line for a failed server training job or data preparation, never a Ray traceback."""

from __future__ import annotations

import re

from estuary import errors
from estuary.errors import EstuaryError

_QUOTED = re.compile(r"estuary\.errors\.(\w+): (.+)")


def one_line(exc: BaseException, what: str = "server training failed") -> EstuaryError:
    """The clearest single line in `exc`'s chain: an Estuary error raised in a worker or Ray Data task
    (unwrapped from Ray's task/worker-group wrappers), else `what` with the error's own text on one line."""
    seen: set[int] = set()
    stack: list[BaseException] = [exc]
    while stack:
        err = stack.pop()
        if id(err) in seen:
            continue
        seen.add(id(err))
        cause = getattr(err, "cause", None)  # ray.exceptions.RayTaskError keeps the original exception here
        if isinstance(cause, BaseException):
            stack.append(cause)
            continue
        if isinstance(err, EstuaryError):
            lines = [ln for ln in str(err).splitlines() if ln.strip()]
            if len(lines) == 1:
                return err
            try:
                return type(err)(lines[0] if lines else type(err).__name__)
            except Exception:
                return EstuaryError(lines[0] if lines else type(err).__name__)
        stack += [e for e in (err.__cause__, err.__context__) if e is not None]
        stack += list((getattr(err, "worker_failures", None) or {}).values())
    text = str(exc)
    found = _QUOTED.search(text)  # the error survived only as text (a remote traceback, e.g. a Ray Data UDF)
    if found is not None:
        kind = getattr(errors, found.group(1), None)
        if isinstance(kind, type) and issubclass(kind, EstuaryError):
            return kind(found.group(2).strip())
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return EstuaryError(f"{what}: {type(exc).__name__}: {(lines[-1] if lines else '')[:400]}")
