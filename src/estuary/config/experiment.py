"""The sections of a job file and `ExperimentConfig`, the typed job they compose.

Every field carries its help text (`estuary validate --explain` prints them). Method parameters live under
`method_params` and are validated by the chosen strategy's own config dataclass when a job is loaded
(`estuary.platform.loading.load_config`); nothing here knows the strategies.
"""

from __future__ import annotations

import difflib
from typing import Any, Literal

import yaml
from pydantic import Field, PrivateAttr, field_validator, model_validator

from estuary.config.clients import ClientsConfig
from estuary.config.faults import FaultsConfig
from estuary.config.privacy import PrivacyConfig
from estuary.config.section import Section
from estuary.data.data_config import DataConfig
from estuary.lm.lora import LoraConfig
from estuary.lm.precision import BF16_MATMUL_HELP
from estuary.serve.config import ServerConfig


class ModelsConfig(Section):
    client: str = Field("smollm2-135m", description="Default client SLM: alias, HF id or local folder.")
    server: str = Field("qwen2.5-0.5b", description="Server LLM: alias, HF id or local folder.")
    per_client: dict[int, str] = Field(
        default_factory=dict, description="Client index → model spec, for heterogeneous clients."
    )
    dtype: Literal["float32", "bfloat16", "float16", "auto"] = Field(
        "float32", description="Weights dtype of the client SLMs (and DP generators, teachers) for training and "
        "evaluation. auto: bfloat16 where the device runs it natively (a GPU; a CPU with AVX512_BF16), else float32 "
        "(resolved once at the run's start and recorded; estuary.lm.precision). bfloat16 on a CPU without it trains "
        "about 20x slower than float32 (bench/results/bf16_cpu.json) unless bf16_matmul is auto.")
    bf16_matmul: Literal["auto", "torch"] = Field("auto", description=BF16_MATMUL_HELP)
    _group_models: dict[int, str] = PrivateAttr(default_factory=dict)  # from clients.groups[].model

    def for_client(self, index: int) -> str:
        return self.per_client.get(index, self._group_models.get(index, self.client))


class TrainingConfig(Section):
    lora: LoraConfig = Field(default_factory=LoraConfig)
    lr: float = Field(5e-4, gt=0, description="AdamW learning rate.")
    steps: int = Field(10, ge=0, description="Local optimisation steps per client per round.")
    batch_size: int = Field(8, ge=1, description="Examples per step.")
    max_length: int = Field(128, ge=8, description="Tokens per example (prompt truncated in the middle).")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    keep_optimizer_state: bool = Field(
        True, description="Carry each client's AdamW state across rounds (part of its ClientState)."
    )


class EvaluationConfig(Section):
    every: int = Field(1, ge=1, description="Evaluate every N rounds (the last round always): the clients, and "
                       "the served LLM of a method that trains it.")
    batch_size: int = Field(16, ge=1, description="Examples per evaluation forward pass.")
    global_test: bool = Field(True, description="Evaluate every client model on the global test split.")
    server: bool = Field(True, description="Also evaluate the server LLM (zero-shot baseline).")


class RayConfig(Section):
    address: str | None = Field(None, description="Existing cluster address; None starts a local one.")
    num_cpus: int | None = Field(None, ge=1, description="CPUs of the local cluster (None = all).")
    dashboard: bool = Field(True, description="Start the dashboard (and metrics export) locally.")


TRACKERS = ("tensorboard", "mlflow", "wandb")  # output.report_to


class OutputConfig(Section):
    dir: str = Field("runs", description="Parent folder of run folders.")
    run_id: str | None = Field(None, description="Run folder name (default: <name>-<timestamp>).")
    keep_checkpoints: int = Field(2, ge=1, description="Round checkpoints kept per strategy.")
    plots: bool = Field(True, description="Draw plots/*.png at the end of the run.")
    report_to: list[str] = Field(
        default_factory=lambda: ["tensorboard"],
        description="Experiment trackers that get every round's metrics, the config and the plots, any of "
        "tensorboard (<run>/tensorboard/), mlflow (output.mlflow_uri) and wandb (offline unless logged in); "
        "[] for none. mlflow and wandb: pip install -e .[tracking].",
    )
    mlflow_uri: str | None = Field(
        None, description="MLflow tracking server (e.g. http://127.0.0.1:5000); default: the local store "
        "<output.dir>/mlruns (view it with `mlflow ui --backend-store-uri <output.dir>/mlruns`)."
    )

    @field_validator("report_to", mode="before")
    @classmethod
    def _one_tracker(cls, v: Any) -> Any:
        """`report_to: tensorboard` is a list of one; `none` is no tracker."""
        if isinstance(v, str):
            return [] if v.lower() == "none" else [v]
        return v

    @field_validator("report_to")
    @classmethod
    def _known_trackers(cls, v: list[str]) -> list[str]:
        for name in v:
            if name not in TRACKERS:
                close = difflib.get_close_matches(name, TRACKERS, n=1, cutoff=0.5)
                hint = f"did you mean '{close[0]}'? " if close else ""
                raise ValueError(f"unknown tracker {name!r} — {hint}(known: {', '.join(TRACKERS)}; [] for none)")
        return list(dict.fromkeys(v))


class ExperimentConfig(Section):
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
