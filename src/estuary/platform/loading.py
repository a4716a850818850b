"""Loading a job: a YAML file (or a dict) and `--set` overrides → a validated `ExperimentConfig`, with the
chosen strategies' parameters and job checks applied (through the registry), every problem one line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from estuary.config import ExperimentConfig
from estuary.config.validation import format_validation_error
from estuary.errors import ConfigError
from estuary.registry import get, validate_params


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
            loaded = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{source}: not a text file (byte {exc.start} is not UTF-8); give a YAML job file "
                              "like jobs/quickstart.yaml") from None
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            line = f" line {mark.line + 1}" if mark is not None else ""
            why = str(getattr(exc, "problem", None) or exc).splitlines()[0]
            raise ConfigError(f"{source}:{line} is not valid YAML ({why})") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{source}: top level must be a mapping of sections (name:, method:, ...)")
        data.update(loaded)
    for assignment in overrides or []:
        apply_override(data, assignment)
    try:
        base_dir = Path(path).resolve().parent if path is not None else Path.cwd()
        cfg = ExperimentConfig.model_validate(data, context={"base_dir": base_dir})  # card paths: beside the job
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, source, ExperimentConfig)) from None
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
