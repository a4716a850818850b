"""The job's `data` section: which task (a task card), where the data root is, how clients share it.

Owned by the data layer and composed into the job config. `data.task` is a built-in task name, the path of
a card YAML file, or a card inline; a path (and a card's relative `source.path`) is resolved against the
folder of the file that names it, passed as the validation context `base_dir` (the job file's folder), so the
section that travels to the workers as JSON holds absolute paths or paths under the data root.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from .card import TaskCard, builtin_card, is_card_path, parse_card, read_card_file


def _base_dir(info: ValidationInfo) -> Path:
    ctx = info.context if isinstance(info.context, dict) else {}
    base = ctx.get("base_dir")
    return Path(base) if base else Path.cwd()


def _anchor(card: TaskCard, base: Path) -> TaskCard:
    """The card with a relative source.path made absolute when it exists beside `base` (else: data.root's)."""
    path = card.source.path
    if path is None or Path(path).expanduser().is_absolute():
        return card
    beside = base / Path(path).expanduser()
    if not beside.exists():
        return card
    return card.model_copy(update={"source": card.source.model_copy(update={"path": str(beside.resolve())})})


def resolve_task_ref(value: Any, base: Path) -> str | TaskCard:
    """A built-in name stays a name; a card file or an inline card becomes a TaskCard (DataError if bad)."""
    if isinstance(value, TaskCard):
        return _anchor(value, base)
    if isinstance(value, str) and not is_card_path(value):
        builtin_card(value)  # unknown names: one line with the known ones
        return value
    if isinstance(value, str):
        path = Path(value).expanduser()
        path = path if path.is_absolute() or not (base / path).exists() else base / path
        card = parse_card(read_card_file(path), where=f"data.task ({path})")
        return _anchor(card, path.resolve().parent)
    return _anchor(parse_card(value), base)


class DataConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    task: str | TaskCard = Field(
        "sst2", description="The task: a built-in name (sst2, agnews, rte, yelp, yelp-gen, e2e), the path of a task "
        "card YAML file, or a card inline (README: 'Your own data').")
    root: str | None = Field(None, description="Data root; default $ESTUARY_DATA or ../shared/data.")
    partition: Literal["iid", "dirichlet", "domain"] = Field(
        "dirichlet", description="How the train split is spread over clients: iid, dirichlet (label skew; the "
        "default for classification), domain (by the card's columns.domain). A generation task defaults to iid.")
    alpha: float = Field(0.5, gt=0, description="Dirichlet concentration (smaller = more label skew).")
    train_size: int | None = Field(
        None, ge=1, description="Subsample of the train split shared by all clients (None = all)."
    )
    test_size: int | None = Field(
        200, ge=1, description="Global held-out test examples, at most (a smaller test split is kept whole; "
        "None = all).")
    client_eval_fraction: float = Field(
        0.2, gt=0, lt=1, description="Share of each client's shard kept as its own eval split."
    )
    client_eval_max: int = Field(50, ge=1, description="Cap on each client's eval split.")
    min_client_size: int = Field(4, ge=1, description="Smallest shard a client may get.")

    @field_validator("task", mode="before")
    @classmethod
    def _resolve(cls, value: Any, info: ValidationInfo) -> Any:
        return resolve_task_ref(value, _base_dir(info))

    @model_validator(mode="after")
    def _partition_fits_task(self) -> DataConfig:
        card = self.card()
        if card.kind != "classification" and "partition" not in self.model_fields_set:
            self.__dict__["partition"] = "iid"  # no labels to skew (set without re-validating the section)
        if self.partition == "domain" and card.columns.domain is None:
            raise ValueError(f"partition 'domain' needs the task's columns.domain; task {card.name} has none — set "
                             "data.task.columns.domain to a column, or use partition iid or dirichlet")
        if self.partition == "dirichlet" and card.kind != "classification":
            raise ValueError(f"partition 'dirichlet' skews labels; task {card.name} is a {card.kind} task — use "
                             "partition iid or domain")
        return self

    def card(self) -> TaskCard:
        return self.task if isinstance(self.task, TaskCard) else builtin_card(self.task)

    @property
    def task_name(self) -> str:
        return self.task.name if isinstance(self.task, TaskCard) else self.task


__all__ = ["DataConfig", "resolve_task_ref"]
