"""What crosses the server boundary: sampling parameters, completions, the top-k log-probability payload.

Plain dataclasses (picklable through Ray handles, JSON via `to_dict`/`from_dict`). `TopKLogprobs` is the
versioned payload distillation consumes; `validate()` checks it and `from_dict` refuses other versions.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from estuary.errors import EstuaryError

SCHEMA_VERSION = 1
Prompt = str | list[dict[str, str]]  # plain text, or chat messages rendered with the model's chat template


class ServeError(EstuaryError):
    """Base of the server's errors; `status` is the HTTP status it maps to."""

    status = 500


class InvalidRequest(ServeError, ValueError):
    """A request the server refuses (bad parameter, over-long prompt, malformed body): HTTP 400."""

    status = 400


class UnknownAdapter(ServeError, KeyError):
    """An adapter name or version that was never published: HTTP 404."""

    status = 404

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else "unknown adapter"


class ServerUnavailable(ServeError):
    """The server LLM's deployment has no live replica (it died mid-run: on a small machine, usually killed for
    memory); one line says so, and the run's completed rounds are kept for `estuary resume`."""

    status = 503


class ServerStartupError(ServeError):
    """The server could not start (model missing, not enough memory, timeout); one line says why."""


@dataclass(frozen=True)
class GenerationParams:
    """Sampling parameters of one generate call (the OpenAI subset strategies need)."""

    max_tokens: int = 64
    temperature: float = 1.0
    top_p: float = 1.0
    n: int = 1
    seed: int | None = None  # prompt i's sample j draws with seed + i·n + j: reproducible, no two alike
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False  # benchmarks: always produce max_tokens

    def for_prompt(self, index: int) -> GenerationParams:
        """These parameters for the call's prompt `index`: its own seed, seed + index·n. vLLM draws a request's
        sample j with its seed + j, so prompt i's samples take seeds seed + i·n … seed + i·n + n − 1 and a
        repeated prompt never shares a seed, hence a sample, with another (seed + i collided: prompt i + 1's
        sample j was prompt i's sample j + 1, and 24 repeats of a prompt with n = 4 gave 27 distinct samples)."""
        return self if self.seed is None or index == 0 else dataclasses.replace(self, seed=self.seed + index * self.n)

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            object.__setattr__(self, "stop", (self.stop,))
        else:
            object.__setattr__(self, "stop", tuple(self.stop))
        problems = []
        if not (isinstance(self.max_tokens, int) and self.max_tokens >= 1):
            problems.append(f"max_tokens must be an integer >= 1, got {self.max_tokens!r}")
        if not (isinstance(self.n, int) and 1 <= self.n <= 128):
            problems.append(f"n must be an integer in [1, 128], got {self.n!r}")
        if not (isinstance(self.temperature, int | float) and math.isfinite(self.temperature)
                and self.temperature >= 0):
            problems.append(f"temperature must be a finite number >= 0, got {self.temperature!r}")
        if not (isinstance(self.top_p, int | float) and 0 < self.top_p <= 1):
            problems.append(f"top_p must be in (0, 1], got {self.top_p!r}")
        if self.seed is not None and not isinstance(self.seed, int):
            problems.append(f"seed must be an integer or None, got {self.seed!r}")
        if any(not isinstance(s, str) or not s for s in self.stop):
            problems.append(f"stop must be non-empty strings, got {self.stop!r}")
        if problems:
            raise InvalidRequest("; ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "stop": list(self.stop)}


@dataclass(frozen=True)
class Sample:
    text: str
    token_ids: list[int]
    finish_reason: Literal["stop", "length", "abort"] | str


@dataclass(frozen=True)
class Completion:
    """The n samples for one prompt."""

    index: int  # position of the prompt in the request
    prompt_tokens: int
    samples: list[Sample]
    adapter: str | None = None  # the concrete version that produced it (name@vN), None = base model

    @property
    def text(self) -> str:
        return self.samples[0].text

    @property
    def output_tokens(self) -> int:
        return sum(len(s.token_ids) for s in self.samples)


@dataclass(frozen=True)
class PositionTopK:
    """The k most likely next tokens at one position, most likely first."""

    ids: list[int]
    tokens: list[str]
    logprobs: list[float]


@dataclass(frozen=True)
class TextTopK:
    """One text: its tokens and, for every position i, the next-token top-k after tokens[: i + 1].

    `token_logprobs[i]` is log p(tokens[i] | tokens[:i]); None for i = 0 (no context).
    `topk[-1]` is the distribution after the whole text (what would come next).
    """

    text: str
    token_ids: list[int]
    tokens: list[str]
    token_logprobs: list[float | None]
    topk: list[PositionTopK]


@dataclass(frozen=True)
class TopKLogprobs:
    """Versioned top-k log-probability payload (`schema_version` = SCHEMA_VERSION)."""

    model: str
    adapter: str | None
    k: int
    engine: str
    dtype: str
    texts: list[TextTopK]
    schema_version: int = SCHEMA_VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> TopKLogprobs:
        """Raise ValueError unless the payload is well formed: k >= 1, consistent lengths, finite and sorted."""
        if self.schema_version != SCHEMA_VERSION:
            raise ValueError(f"schema_version {self.schema_version} is not {SCHEMA_VERSION}")
        if not (isinstance(self.k, int) and self.k >= 1):
            raise ValueError(f"k must be >= 1, got {self.k!r}")
        for t, item in enumerate(self.texts):
            n = len(item.token_ids)
            if not (len(item.tokens) == len(item.token_logprobs) == len(item.topk) == n):
                raise ValueError(f"text {t}: token_ids/tokens/token_logprobs/topk lengths differ "
                                 f"({n}, {len(item.tokens)}, {len(item.token_logprobs)}, {len(item.topk)})")
            for i, lp in enumerate(item.token_logprobs):
                if (lp is None) != (i == 0) or (lp is not None and not (math.isfinite(lp) and lp <= 1e-4)):
                    raise ValueError(f"text {t} position {i}: bad token logprob {lp!r}")
            for i, pos in enumerate(item.topk):
                if not (len(pos.ids) == len(pos.tokens) == len(pos.logprobs) == self.k):
                    raise ValueError(f"text {t} position {i}: expected {self.k} ids/tokens/logprobs, got "
                                     f"{len(pos.ids)}/{len(pos.tokens)}/{len(pos.logprobs)}")
                if len(set(pos.ids)) != self.k:
                    raise ValueError(f"text {t} position {i}: repeated token ids {pos.ids}")
                for j, lp in enumerate(pos.logprobs):
                    if not (math.isfinite(lp) and lp <= 1e-4):
                        raise ValueError(f"text {t} position {i}: logprob {lp!r} is not a finite value <= 0")
                    if j and lp > pos.logprobs[j - 1] + 1e-4:
                        raise ValueError(f"text {t} position {i}: logprobs are not sorted descending")
        return self

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def json_schema(cls) -> dict[str, Any]:
        """JSON Schema of this payload version, for clients outside Python (`validate` checks more: lengths,
        k entries per position, finite logprobs <= 0 sorted descending)."""
        from pydantic import TypeAdapter

        schema = TypeAdapter(cls).json_schema()
        schema["properties"]["schema_version"] = {"const": SCHEMA_VERSION, "title": "Schema Version"}
        schema["required"] = sorted({*schema.get("required", []), "schema_version"})
        schema["$id"] = f"estuary/topk_logprobs/v{SCHEMA_VERSION}"
        return schema

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TopKLogprobs:
        """Parse and validate a payload (e.g. the HTTP route's JSON); other schema versions are refused."""
        if not isinstance(data, dict) or data.get("schema_version") != SCHEMA_VERSION:
            got = data.get("schema_version") if isinstance(data, dict) else type(data).__name__
            raise ValueError(f"not a TopKLogprobs payload of schema_version {SCHEMA_VERSION} (got {got!r})")
        try:
            texts = [
                TextTopK(
                    text=t["text"], token_ids=list(t["token_ids"]), tokens=list(t["tokens"]),
                    token_logprobs=list(t["token_logprobs"]),
                    topk=[PositionTopK(ids=list(p["ids"]), tokens=list(p["tokens"]), logprobs=list(p["logprobs"]))
                          for p in t["topk"]],
                )
                for t in data["texts"]
            ]
            payload = cls(model=data["model"], adapter=data.get("adapter"), k=data["k"], engine=data["engine"],
                          dtype=data["dtype"], texts=texts, extra=dict(data.get("extra") or {}))
        except (KeyError, TypeError) as exc:
            raise ValueError(f"malformed TopKLogprobs payload: {exc!r}") from None
        return payload.validate()
