"""Checkpoints of a server training job, through Ray Train: the adapter in PEFT format plus DeepSpeed's state.

    <checkpoint>/
        adapter/              peft `save_pretrained` of the LoRA adapter (what `ServerLLM.publish` takes)
        deepspeed/<tag>/      DeepSpeed `save_checkpoint`: every rank's ZeRO shards (frozen base weights left out)
        deepspeed/latest
        trainer_state.json    step, world size, per-step losses, tokens, attempts (`TrainerState`)

Every worker saves its part into a local folder and reports it with `ray.train.report`; Ray Train merges
the parts into one checkpoint folder under the job's storage path. A restarted worker group gets the last
one from `ray.train.get_checkpoint()`, and a new job can start from it (`resume_from`). ZeRO shards are
per rank, so a resumed job needs the same number of workers (`check_resumable`).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from estuary.errors import ConfigError

ADAPTER = "adapter"
DEEPSPEED = "deepspeed"
STATE = "trainer_state.json"


@dataclass
class TrainerState:
    step: int = 0  # optimizer steps done
    world_size: int = 1
    zero_stage: int = 0
    losses: list[float] = field(default_factory=list)  # mean loss of each step across workers
    sft: list[float] = field(default_factory=list)  # mean SFT term of each step
    kd: list[float] = field(default_factory=list)  # mean distillation term of each step
    tokens: int = 0  # non-padding tokens trained on, all workers
    attempts: int = 1  # worker-group starts that reached training (1 + recoveries)
    resumed_from: int | None = None  # step of the checkpoint the latest attempt started from
    worker_started_at: float | None = None  # wall clock (epoch s) when rank 0 of the latest attempt began
    first_step_at: float | None = None  # wall clock (epoch s) when the latest attempt's first step began
    train_seconds: float = 0.0  # wall seconds inside the step loop, all attempts

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=1)

    @classmethod
    def from_json(cls, text: str) -> TrainerState:
        data = json.loads(text)
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def tag(step: int) -> str:
    return f"step-{step:06d}"


def read_state(folder: str | Path) -> TrainerState:
    path = Path(folder) / STATE
    if not path.is_file():
        raise ConfigError(f"{folder} is not a server training checkpoint (no {STATE})")
    return TrainerState.from_json(path.read_text())


def adapter_path(folder: str | Path) -> Path:
    """The PEFT adapter folder inside a checkpoint."""
    path = Path(folder) / ADAPTER
    if not (path / "adapter_config.json").is_file():
        raise ConfigError(f"{folder} holds no adapter ({ADAPTER}/adapter_config.json)")
    return path


def check_resumable(folder: str | Path, workers: int, zero_stage: int) -> TrainerState:
    """The checkpoint's state, if a job of `workers` workers at `zero_stage` can continue from it."""
    state = read_state(folder)
    if state.world_size != workers or state.zero_stage != zero_stage:
        raise ConfigError(f"checkpoint {folder} was written by {state.world_size} workers at ZeRO stage "
                          f"{state.zero_stage}; resume it with train.workers={state.world_size} and "
                          f"train.zero.stage={state.zero_stage} (DeepSpeed shards its state per worker)")
    return state


# ------------------------------------------------------------------------------ inside a worker


def save_adapter(engine: Any, path: Path, rank: int) -> None:
    """Rank 0 writes the adapter; under ZeRO-3 every rank first helps gather the partitioned LoRA weights."""
    module = engine.module
    if engine.zero_optimization_stage() == 3:
        import deepspeed

        params = [p for p in module.parameters() if p.requires_grad]
        with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
            if rank == 0:
                module.save_pretrained(str(path))
    elif rank == 0:
        module.save_pretrained(str(path))


def save(engine: Any, folder: Path, state: TrainerState, rank: int) -> None:
    """This rank's part of a checkpoint at `state.step` (collective: every rank must call it)."""
    engine.save_checkpoint(str(folder / DEEPSPEED), tag=tag(state.step), exclude_frozen_parameters=True)
    save_adapter(engine, folder / ADAPTER, rank)
    if rank == 0:
        (folder / STATE).write_text(state.to_json())


def load(engine: Any, folder: Path) -> TrainerState:
    """Restore the DeepSpeed engine (LoRA weights, optimizer, ZeRO shards) from a checkpoint folder."""
    state = read_state(folder)
    path, _ = engine.load_checkpoint(str(folder / DEEPSPEED), tag=tag(state.step), load_module_strict=False)
    if path is None:
        raise RuntimeError(f"DeepSpeed found no state for {tag(state.step)} in {folder / DEEPSPEED}")
    return state
