"""Job files: YAML → a typed `ExperimentConfig`, validated in one pass with one-line errors.

Every field carries its help text (`estuary validate --explain` prints them). Method parameters live
under `method_params` and are validated by the chosen strategy's own config dataclass.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field, PrivateAttr, ValidationError, field_validator, model_validator

from estuary.errors import ConfigError
from estuary.platform.clients_config import ClientsConfig
from estuary.platform.clients_config import Section as _Section
from estuary.platform.faults import FaultsConfig
from estuary.serve.config import ServerConfig


class ModelsConfig(_Section):
    client: str = Field("smollm2-135m", description="Default client SLM: alias, HF id or local folder.")
    server: str = Field("qwen2.5-0.5b", description="Server LLM: alias, HF id or local folder.")
    per_client: dict[int, str] = Field(
        default_factory=dict, description="Client index → model spec, for heterogeneous clients."
    )
    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32", description="Weights dtype for training and evaluation (float32 is safest on CPU)."
    )
    _group_models: dict[int, str] = PrivateAttr(default_factory=dict)  # from clients.groups[].model

    def for_client(self, index: int) -> str:
        return self.per_client.get(index, self._group_models.get(index, self.client))


class DataConfig(_Section):
    task: str = Field("sst2", description="Task name: sst2, agnews, rte, yelp, yelp-gen, e2e.")
    root: str | None = Field(None, description="Data root; default $ESTUARY_DATA or ../shared/data.")
    partition: Literal["iid", "dirichlet", "domain"] = Field(
        "dirichlet", description="How the train split is spread over clients."
    )
    alpha: float = Field(0.5, gt=0, description="Dirichlet concentration (smaller = more label skew).")
    train_size: int | None = Field(
        None, ge=1, description="Subsample of the train split shared by all clients (None = all)."
    )
    test_size: int | None = Field(200, ge=1, description="Global held-out test examples (None = all).")
    client_eval_fraction: float = Field(
        0.2, gt=0, lt=1, description="Share of each client's shard kept as its own eval split."
    )
    client_eval_max: int = Field(50, ge=1, description="Cap on each client's eval split.")
    min_client_size: int = Field(4, ge=1, description="Smallest shard a client may get.")


class LoraConfig(_Section):
    r: int = Field(8, ge=1, description="LoRA rank.")
    alpha: int = Field(16, ge=1, description="LoRA alpha (scale = alpha / r).")
    dropout: float = Field(0.05, ge=0, lt=1, description="LoRA dropout.")
    targets: list[str] = Field(["q_proj", "v_proj"], min_length=1, description="Target module names.")


class TrainingConfig(_Section):
    lora: LoraConfig = Field(default_factory=LoraConfig)
    lr: float = Field(5e-4, gt=0, description="AdamW learning rate.")
    steps: int = Field(10, ge=0, description="Local optimisation steps per client per round.")
    batch_size: int = Field(8, ge=1, description="Examples per step.")
    max_length: int = Field(128, ge=8, description="Tokens per example (prompt truncated in the middle).")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    keep_optimizer_state: bool = Field(
        True, description="Carry each client's AdamW state across rounds (part of its ClientState)."
    )


class EvaluationConfig(_Section):
    every: int = Field(1, ge=1, description="Evaluate every N rounds (the last round always).")
    batch_size: int = Field(16, ge=1, description="Examples per evaluation forward pass.")
    global_test: bool = Field(True, description="Evaluate every client model on the global test split.")
    server: bool = Field(True, description="Also evaluate the server LLM (zero-shot baseline).")


class RayConfig(_Section):
    address: str | None = Field(None, description="Existing cluster address; None starts a local one.")
    num_cpus: int | None = Field(None, ge=1, description="CPUs of the local cluster (None = all).")
    dashboard: bool = Field(True, description="Start the dashboard (and metrics export) locally.")


class OutputConfig(_Section):
    dir: str = Field("runs", description="Parent folder of run folders.")
    run_id: str | None = Field(None, description="Run folder name (default: <name>-<timestamp>).")
    keep_checkpoints: int = Field(2, ge=1, description="Round checkpoints kept per strategy.")
    plots: bool = Field(True, description="Draw plots/*.png at the end of the run.")


class PrivacyConfig(_Section):
    target_epsilon: float | None = Field(
        3.0,
        description="ε each client may reach (noise calibrated to it, across the DP work planned); "
        "null = ∞: DP disabled, recorded loudly in privacy.jsonl and summary.json.",
    )
    delta: float | None = Field(
        None, description="δ of every client's guarantee; null = 1/n^1.1 of the client's data size n."
    )
    noise_multiplier: float | None = Field(
        None, gt=0, description="Fixed noise multiplier σ instead of calibrating to target_epsilon."
    )
    max_grad_norm: float = Field(1.0, gt=0, description="Per-example gradient clipping norm C.")
    accountant: Literal["rdp", "prv"] = Field("rdp", description="Opacus accountant that reports ε.")
    clipping: Literal["auto", "ghost", "ghost_bk", "hooks"] = Field(
        "auto",
        description="hooks: Opacus per-example gradients; ghost: Opacus ghost clipping (2 backward passes); "
        "ghost_bk: ghost norms + book-keeping (1 pass, Linear layers); auto: ghost clipping where Opacus "
        "supports every trainable layer (ghost_bk for LoRA on Linear layers, else ghost), hooks otherwise.",
    )
    max_physical_batch_size: int | None = Field(
        None, ge=1, description="Largest batch one forward/backward pass holds: a Poisson batch above it runs in "
        "chunks whose clipped gradients add up before one noised step (Opacus BatchMemoryManager's virtual steps); "
        "same update and guarantee, less memory. null: the whole batch at once.",
    )
    secure_rng: bool = Field(
        False, description="Cryptographic RNG for sampling and noise (torchcsprng if installed); not reproducible."
    )
    generator_model: str | None = Field(
        None, description="Model the clients' DP generators are fine-tuned from (alias, HF id or folder; "
        "null: each client's own SLM)."
    )
    budget_epsilon: float | None = Field(
        None, description="Hard cap on a client's ε over the run (null = target_epsilon); DP work past it is refused."
    )

    @field_validator("target_epsilon", "budget_epsilon")
    @classmethod
    def _positive_epsilon(cls, v: float | None) -> float | None:
        if v is None or v == float("inf"):
            return None
        if not v > 0:
            raise ValueError("ε must be > 0 (ε ≤ 0 leaves no budget); use e.g. 3.0, or null for ε = ∞")
        return v

    @field_validator("delta")
    @classmethod
    def _delta_range(cls, v: float | None) -> float | None:
        if v is not None and not 0 < v < 1:
            raise ValueError("δ must be in (0, 1), far below 1/n (e.g. 1e-5); null uses 1/n^1.1")
        return v

    @property
    def enabled(self) -> bool:
        """False when the job disabled privacy (ε = ∞: no target ε and no noise multiplier)."""
        return self.target_epsilon is not None or self.noise_multiplier is not None

    @property
    def budget(self) -> float | None:
        return self.budget_epsilon if self.budget_epsilon is not None else self.target_epsilon


class ExperimentConfig(_Section):
    name: str = Field("experiment", description="Experiment name (prefix of the run id).")
    method: str = Field("standalone", description="Strategy to run (see `estuary methods`).")
    method_params: dict[str, Any] = Field(
        default_factory=dict, description="Parameters of the method's config dataclass."
    )
    baselines: list[str] = Field(
        default_factory=lambda: ["zero_shot", "standalone", "centralized"],
        description="Baseline strategies run in the same run with the same seed and splits.",
    )
    baseline_params: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="Per-baseline parameters, e.g. {centralized: {steps: 20}}."
    )
    seed: int = Field(0, description="Seed of splits, partitions, client sampling and training.")
    rounds: int = Field(2, ge=1, description="Federated rounds of the method.")
    models: ModelsConfig = Field(default_factory=ModelsConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    clients: ClientsConfig = Field(default_factory=ClientsConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    ray: RayConfig = Field(default_factory=RayConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)
    privacy: PrivacyConfig = Field(default_factory=PrivacyConfig)
    server: ServerConfig = Field(
        default_factory=ServerConfig,
        description="How the server LLM is served when a method needs it (Serve + vLLM); its model defaults "
        "to models.server.",
    )
    faults: FaultsConfig = Field(
        default_factory=FaultsConfig, description="Fault-injection drills (worker and driver kills); off by default."
    )

    @field_validator("baselines")
    @classmethod
    def _unique(cls, v: list[str]) -> list[str]:
        return list(dict.fromkeys(v))

    @model_validator(mode="after")
    def _per_client_in_range(self) -> ExperimentConfig:
        bad = [i for i in self.models.per_client if not 0 <= i < self.clients.count]
        if bad:
            raise ValueError(f"models.per_client has client index {bad[0]} outside 0..{self.clients.count - 1}")
        start, group_models = 0, {}
        for g in self.clients.groups:
            if g.model is not None:
                group_models.update(dict.fromkeys(range(start, start + g.count), g.model))
            start += g.count
        self.models._group_models = group_models
        return self

    @model_validator(mode="after")
    def _one_server_model(self) -> ExperimentConfig:
        """models.server and server.model name one model: either may be given; both only if they agree."""
        named_server = "model" in self.server.model_fields_set
        named_models = "server" in self.models.model_fields_set
        if named_server and named_models and self.server.model != self.models.server:
            raise ValueError(f"models.server ({self.models.server!r}) and server.model ({self.server.model!r}) "
                             "differ; give the server LLM once (models.server)")
        if named_server and not named_models:
            self.models.server = self.server.model
        elif not named_server:
            self.server.model = self.models.server
        return self

    def server_config(self) -> ServerConfig:
        """The server section (its model is models.server)."""
        return self.server

    def strategies(self) -> list[str]:
        """Strategies this run executes, in order: zero-shot first, the method last."""
        order = [b for b in self.baselines if b != self.method]
        order.sort(key=lambda n: n != "zero_shot")
        return [*order, self.method]

    def params_of(self, strategy: str) -> dict[str, Any]:
        """The parameters a strategy of this run is built with."""
        return self.method_params if strategy == self.method else self.baseline_params.get(strategy, {})

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


# ---------------------------------------------------------------------------------------------------
# Loading, overrides and one-line errors


def _parse_scalar(raw: str) -> Any:
    """`--set a.b=value`: the value is parsed as YAML (numbers, bools, lists, null)."""
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw


def apply_override(data: dict[str, Any], assignment: str) -> None:
    if "=" not in assignment:
        raise ConfigError(f"--set {assignment!r}: expected KEY=VALUE, e.g. --set clients.count=8")
    key, raw = assignment.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise ConfigError(f"--set {assignment!r}: empty key; use dotted keys like training.lr=1e-4")
    node: dict[str, Any] = data
    for p in parts[:-1]:
        child = node.setdefault(p, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {key}: '{p}' is a value, not a section")
        node = child
    node[parts[-1]] = _parse_scalar(raw)


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


def load_config(
    path: str | Path | None = None,
    overrides: list[str] | None = None,
    *,
    base: dict[str, Any] | None = None,
) -> ExperimentConfig:
    """Load a job file (or `base` dict), apply `--set` overrides, validate everything once."""
    source = str(path) if path is not None else "config"
    data: dict[str, Any] = dict(base or {})
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"job file {source} not found; give a path like jobs/quickstart.yaml")
        try:
            loaded = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            line = f" line {mark.line + 1}" if mark is not None else ""
            raise ConfigError(f"{source}:{line} is not valid YAML ({getattr(exc, 'problem', exc)})") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{source}: top level must be a mapping of sections (name:, method:, ...)")
        data.update(loaded)
    for assignment in overrides or []:
        apply_override(data, assignment)
    try:
        cfg = ExperimentConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, source, ExperimentConfig)) from None
    from estuary.platform.registry import get, validate_params  # the registry knows every method's config

    for name in cfg.baseline_params:
        if name not in cfg.baselines:
            raise ConfigError(f"{source}: baseline_params.{name} names no baseline of this run ({cfg.baselines})")
    for name in cfg.strategies():
        validate_params(name, cfg.params_of(name), source)
        get(name).check_job(cfg, source)
    return cfg


def explain(model: type[BaseModel] = ExperimentConfig, prefix: str = "") -> list[tuple[str, str, str]]:
    """(dotted key, default, help) for every field, for `estuary validate --explain`."""
    rows: list[tuple[str, str, str]] = []
    for name, f in model.model_fields.items():
        ann = f.annotation
        key = f"{prefix}{name}"
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            rows.extend(explain(ann, key + "."))
        else:
            default = f.get_default(call_default_factory=True)
            rows.append((key, repr(default), f.description or ""))
    return rows
