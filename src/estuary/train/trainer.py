"""`ServerTrainer`: aggregated client knowledge → a new LoRA adapter of the server LLM, via Ray Train + DeepSpeed.

    trainer = ServerTrainer(TrainConfig(model="qwen2.5-0.5b", workers=2), storage_path=run_dir / "train")
    outcome = trainer.fit(knowledge, name="round-0003")        # Dataset, records or object refs
    version = llm.publish(outcome.adapter_dir, name="server")  # the next live version, 'server@vN'

`fit` checks everything it can on the driver first (preflight: resources, model, LoRA targets,
knowledge), then runs a `ray.train.torch.TorchTrainer` whose workers run `estuary.train.per_worker.train_loop`.
A job is named: running `fit` again with the same name and storage path continues that job from its last
checkpoint (after a crash of the driver, or when a whole experiment resumes a round), and `resume_from`
starts a new job from any earlier checkpoint. Worker failures inside a job are recovered by Ray Train
(`max_failures`) from the last checkpoint.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from estuary.errors import ConfigError, EstuaryError
from estuary.train import ds_checkpoint
from estuary.train.ds_checkpoint import TrainerState
from estuary.train.failures import one_line
from estuary.train.train_config import TrainConfig

if TYPE_CHECKING:
    from estuary.serve.adapters import AdapterVersion
    from estuary.serve.client import ServerLLM


@dataclass(frozen=True)
class TrainOutcome:
    name: str  # the Ray Train job name
    checkpoint_dir: Path  # the last checkpoint (adapter + DeepSpeed state)
    adapter_dir: Path  # the trained adapter, PEFT format: what ServerLLM.publish takes
    state: TrainerState  # steps, per-step losses, tokens, attempts
    rows: int  # knowledge records
    fit_seconds: float  # wall time of TorchTrainer.fit
    startup_seconds: float  # from fit() to the first training step of the last attempt

    @property
    def losses(self) -> list[float]:
        return self.state.losses

    @property
    def tokens_per_second(self) -> float:
        return self.state.tokens / self.state.train_seconds if self.state.train_seconds else 0.0


def _job_name() -> str:
    return time.strftime("server-%Y%m%d-%H%M%S")


class ServerTrainer:
    """Runs server fine-tuning jobs with one `TrainConfig` (a dict is validated into one)."""

    def __init__(self, config: TrainConfig | dict[str, Any], *, storage_path: str | Path | None = None) -> None:
        self.config = TrainConfig.load(config)
        storage = storage_path or self.config.storage_path
        if storage is None:
            from estuary.models import cache_dir

            storage = cache_dir() / "train"
        self.storage_path = Path(storage).expanduser().resolve()

    def job_dir(self, name: str) -> Path:
        return self.storage_path / name

    def fit(self, knowledge: Any, *, name: str | None = None, resume_from: str | Path | None = None) -> TrainOutcome:
        """Train on `knowledge` (a ray Dataset, records, or object refs to lists of records)."""
        import ray.train
        from ray.train.torch import TorchConfig, TorchTrainer

        from estuary.config import RayConfig
        from estuary.runtime import ensure_ray
        from estuary.train import checks
        from estuary.train.per_worker import train_loop

        cfg = self.config
        name = name or _job_name()
        ensure_ray(RayConfig(dashboard=False))  # connect to (or start) Ray as `estuary run` does, unless connected
        checks.check_cluster(cfg)  # cheapest first: a job that can never be placed fails at once
        if resume_from is not None:
            ds_checkpoint.check_resumable(resume_from, cfg.workers, cfg.zero.stage)
        model_path, _ = checks.check_model(cfg)
        try:
            self.storage_path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"train.storage_path {self.storage_path} cannot be created ({exc.strerror})") from None
        checks.wait_for_resources(cfg)  # before any Ray Data task: CPUs held by others would stall them
        shuffle_seed = cfg.seed if cfg.shuffle else None
        dataset, rows = checks.check_knowledge(knowledge, cfg.workers, shuffle_seed=shuffle_seed)
        loop_config = {
            "train": cfg.model_dump(mode="json"),
            "model_path": model_path,
            "drill_marker": str(self.job_dir(name) / ".fault-drill") if cfg.fault_drill_step else None,
            # Train V2 dropped TorchTrainer(resume_from_checkpoint=): the workers load it when the job has none.
            "resume_from": str(Path(resume_from).resolve()) if resume_from is not None else None,
        }
        trainer = TorchTrainer(
            train_loop,
            train_loop_config=loop_config,
            torch_config=TorchConfig(backend=cfg.dist_backend),
            scaling_config=ray.train.ScalingConfig(
                num_workers=cfg.workers, use_gpu=cfg.on_gpu, resources_per_worker=cfg.resources.bundle(),
                placement_strategy=cfg.placement_strategy,
            ),
            run_config=ray.train.RunConfig(
                name=name, storage_path=str(self.storage_path),
                failure_config=ray.train.FailureConfig(  # type: ignore[call-arg]  # (the Train V2 class)
                    max_failures=cfg.max_failures, controller_failure_limit=cfg.scheduling_retries),
                checkpoint_config=ray.train.CheckpointConfig(num_to_keep=cfg.keep_checkpoints),
            ),
            datasets={"train": dataset},
        )
        began = time.time()
        try:
            result = trainer.fit()
        except Exception as exc:
            raise one_line(exc) from exc
        fit_seconds = time.time() - began
        if result.checkpoint is None:
            raise EstuaryError(f"server training job {name!r} finished without a checkpoint")
        folder = Path(result.checkpoint.path)
        state = ds_checkpoint.read_state(folder)
        startup = (state.first_step_at - began) if state.first_step_at and state.first_step_at >= began else 0.0
        return TrainOutcome(name=name, checkpoint_dir=folder, adapter_dir=ds_checkpoint.adapter_path(folder),
                            state=state, rows=rows, fit_seconds=fit_seconds, startup_seconds=startup)


def train_server_adapter(knowledge: Any, config: TrainConfig | dict[str, Any], *, name: str | None = None,
                         storage_path: str | Path | None = None, resume_from: str | Path | None = None) -> Path:
    """What a round calls: train on the round's knowledge and return the trained adapter folder (PEFT format)."""
    trainer = ServerTrainer(config, storage_path=storage_path)
    return trainer.fit(knowledge, name=name, resume_from=resume_from).adapter_dir


def check_served_model(config: TrainConfig, llm: ServerLLM) -> None:
    """ConfigError unless the deployment serves the model this job adapts (an adapter fits one base model)."""
    from estuary.models import resolve_model

    served = Path(str(llm.info().get("model_path", ""))).resolve()
    trained = Path(resolve_model(config.model)).resolve()
    if served != trained:
        raise ConfigError(f"train.model {config.model!r} ({trained}) is not the model the server LLM deployment "
                          f"serves ({served}); train the served model")


def train_and_publish(knowledge: Any, config: TrainConfig | dict[str, Any], llm: ServerLLM, *,
                      adapter_name: str = "server", name: str | None = None,
                      storage_path: str | Path | None = None) -> tuple[TrainOutcome, AdapterVersion]:
    """Train, then publish the adapter as the next version of `adapter_name` in the live deployment."""
    trainer = ServerTrainer(config, storage_path=storage_path)
    check_served_model(trainer.config, llm)
    outcome = trainer.fit(knowledge, name=name)
    return outcome, llm.publish(outcome.adapter_dir, name=adapter_name)
