"""The wire contract: what travels between the driver and a client, and what comes back.

- `ClientTask`: what the driver asks of a client in a round.
- `ClientState`: everything a client owns between tasks, as plain data. In pooled mode it lives outside the
  worker (Ray object store, written to the run folder at each checkpoint) and travels with each task; in
  dedicated mode the same object is handed to the same actor every time. One format, two placements.
- `Egress`: the one typed record allowed to leave a client. A client's private examples never cross this
  boundary; what does (metrics, DP synthetic samples with their ledger entries, top-k distributions, scores)
  is named and typed here, so the privacy boundary is this type.
- `RoundOutcome`: what the pool hands back to the strategy for a round's tasks.
- `TaskError`: a task's error inside a batched call.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from estuary.data.task import Example
    from estuary.privacy.ledger import LedgerEntry


@dataclass(frozen=True)
class ClientTask:
    client_id: str
    round: int
    kind: str = "train"  # strategy-defined: "train", "eval", ...
    evaluate: bool = True  # evaluate after the step (own eval split, and global test if configured)
    params: dict[str, Any] = field(default_factory=dict)  # strategy-defined instructions


@dataclass
class ClientState:
    client_id: str
    model: str  # model spec this client's SLM is built from
    adapter: dict[str, torch.Tensor] | None = None  # LoRA weights (PEFT state dict); None = initial
    optimizer: dict[str, Any] | None = None  # AdamW state_dict, when kept across rounds
    rounds_trained: int = 0
    steps_trained: int = 0
    privacy: dict[str, Any] = field(default_factory=dict)  # accountant state (privacy ledger)
    extra: dict[str, Any] = field(default_factory=dict)  # strategy-owned per-client data

    def nbytes(self) -> int:
        total = 0
        for t in (self.adapter or {}).values():
            total += t.numel() * t.element_size()
        return total

    def __getstate__(self) -> dict[str, Any]:
        """Pickled (Ray's transfers), every CPU tensor of `adapter`, `optimizer` and `extra` travels in one
        contiguous array: one zero-copy buffer instead of hundreds of tensors pickled one by one."""
        state = dict(self.__dict__)
        if "torch" not in sys.modules:  # nothing can hold a tensor
            return state
        tensors: list[Any] = []
        for key in _PACKED:
            state[key] = _lift(state[key], tensors)
        if tensors:
            state["_packed"] = _pack(tensors)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        packed = state.pop("_packed", None)
        if packed is not None:
            tensors = _unpack(*packed)
            for key in _PACKED:
                state[key] = _drop(state[key], tensors)
        self.__dict__.update(state)


_PACKED = ("adapter", "optimizer", "extra")  # the ClientState fields whose tensors travel packed
_MAPPINGS = (dict, OrderedDict)  # rebuilt with their tensors lifted out (PEFT and AdamW state dicts)
_ALIGN = 64  # bytes: every packed tensor starts aligned, so each is a view of its dtype


@dataclass(frozen=True)
class _Slot:
    index: int  # where a packed tensor was


def _lift(value: Any, tensors: list[Any]) -> Any:
    """`value` with each CPU tensor replaced by a _Slot (appended to `tensors`)."""
    import torch

    if isinstance(value, torch.Tensor) and value.device.type == "cpu" and not value.requires_grad:
        tensors.append(value)
        return _Slot(len(tensors) - 1)
    if type(value) in _MAPPINGS:  # exact types: a defaultdict or a namedtuple is left to pickle as it is
        return type(value)((k, _lift(v, tensors)) for k, v in value.items())
    if type(value) in (list, tuple):
        return type(value)(_lift(v, tensors) for v in value)
    return value


def _drop(value: Any, tensors: list[Any]) -> Any:
    if isinstance(value, _Slot):
        return tensors[value.index]
    if type(value) in _MAPPINGS:
        return type(value)((k, _drop(v, tensors)) for k, v in value.items())
    if type(value) in (list, tuple):
        return type(value)(_drop(v, tensors) for v in value)
    return value


def _pack(tensors: list[Any]) -> tuple[Any, list[tuple[Any, tuple[int, ...], int, int]]]:
    import torch

    specs, offset = [], 0
    for t in tensors:
        n = t.numel() * t.element_size()
        specs.append((t.dtype, tuple(t.shape), offset, n))
        offset += -(-n // _ALIGN) * _ALIGN
    flat = torch.empty(offset, dtype=torch.uint8)
    for t, (_dtype, _shape, start, n) in zip(tensors, specs, strict=True):
        if n:
            flat[start : start + n].copy_(t.detach().contiguous().reshape(-1).view(torch.uint8))
    return flat.numpy(), specs


def _unpack(array: Any, specs: list[tuple[Any, tuple[int, ...], int, int]]) -> list[Any]:
    """The tensors, as views of one buffer this process owns (an array read from Ray's store is read-only)."""
    import torch

    flat = torch.from_numpy(array if array.flags.writeable else array.copy())
    return [flat[start : start + n].view(dtype).reshape(shape) if n else torch.empty(shape, dtype=dtype)
            for dtype, shape, start, n in specs]


@dataclass
class Egress:
    client_id: str
    round: int
    strategy: str
    metrics: dict[str, float] = field(default_factory=dict)  # e.g. train/loss, eval/accuracy, test/macro_f1
    losses: list[float] = field(default_factory=list)  # per-step training losses of this task
    payload: dict[str, Any] = field(default_factory=dict)  # method-specific, privacy-reviewed content
    wall_s: float = 0.0
    worker: str = ""
    examples: int = 0  # training examples processed in this task
    attempts: int = 1  # filled by the pool: tries it took (retries after crashes or errors)
    privacy: list[LedgerEntry] = field(default_factory=list)  # ledger entries of this task → privacy.jsonl
    synthetic: list[Example] = field(default_factory=list)  # DP synthetic examples (need a "release" entry)

    def __post_init__(self) -> None:
        for k, v in self.metrics.items():
            if not isinstance(v, (int, float)) or not math.isfinite(float(v)):  # NaN or ±inf: no summary of it
                raise ValueError(f"client {self.client_id}: metric {k!r} is not a finite number ({v!r})")
        if self.synthetic and not any(e.op == "release" for e in self.privacy):
            raise ValueError(
                f"client {self.client_id}: synthetic examples may leave only with their ledger 'release' entry "
                "(use ClientContext.dp_synthesize)"
            )

    @property
    def refusals(self) -> list[LedgerEntry]:
        """DP work this client refused in the task (its privacy budget would have been exceeded)."""
        return [e for e in self.privacy if e.op == "refused"]

    def privacy_rows(self) -> list[dict[str, Any]]:
        """The rows this task adds to privacy.jsonl."""
        return [{**e.row(), "strategy": self.strategy, "round": self.round, "client": self.client_id}
                for e in self.privacy]

    def record(self) -> dict[str, Any]:
        """The row written to clients.jsonl."""
        return {
            "strategy": self.strategy,
            "round": self.round,
            "client": self.client_id,
            "metrics": self.metrics,
            "loss_first": self.losses[0] if self.losses else None,
            "loss_last": self.losses[-1] if self.losses else None,
            "examples": self.examples,
            "wall_s": round(self.wall_s, 4),
            "worker": self.worker,
            "attempts": self.attempts,
        }


@dataclass(frozen=True)
class TaskError:
    """A client task that raised inside a batched call (`ClientWorker.run_batch`): its error line. The pool
    retries or reports it as it does a task that raised in a call of its own."""

    text: str


def error_line(exc: BaseException) -> str:
    """`TypeName: last line of the message`, at most 500 characters: how a client's failure is reported."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[-1] if text else ''}"[:500]


@dataclasses.dataclass
class RoundOutcome:
    results: dict[str, Egress]
    failures: dict[str, str]  # client id → last error text
    attempts: int = 0  # task submissions, retries included
    late: list[str] = dataclasses.field(default_factory=list)  # cut by clients.round_deadline_s (in failures)

    @property
    def ok(self) -> int:
        return len(self.results)

    def then(self, later: RoundOutcome) -> RoundOutcome:
        """This phase followed by a later one in the same round: the later Egress records, carrying the
        earlier phase's metrics they do not overwrite and counting the training examples of both phases;
        failures and attempts of both."""
        results = {cid: dataclasses.replace(eg, metrics={**self.results[cid].metrics, **eg.metrics},
                                            examples=self.results[cid].examples + eg.examples)
                   if cid in self.results else eg for cid, eg in later.results.items()}
        failures = {**self.failures, **later.failures}
        return RoundOutcome(results, {c: t for c, t in failures.items() if c not in results},
                            self.attempts + later.attempts, [*self.late, *later.late])
