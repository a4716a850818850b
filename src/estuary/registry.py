"""Strategy registry: `register` a Strategy subclass under its name, `get` it back by name.

A built-in strategy's module is imported the first time the strategy is asked for (`BUILTINS` names it), so a
run imports the strategies it executes and nothing else: a `noop` run loads no model code. An unknown name
lists the known ones. Method parameters are validated against the strategy's config dataclass.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
from typing import TYPE_CHECKING, Any, TypeVar

from estuary.errors import ConfigError

if TYPE_CHECKING:
    from estuary.platform.strategy import Strategy

_REGISTRY: dict[str, type[Strategy]] = {}
S = TypeVar("S", bound="type[Strategy]")

# Built-in method name → the module that registers it (imported on first use).
BUILTINS: dict[str, str] = {
    **dict.fromkeys(("zero_shot", "standalone", "centralized", "llm_centralized"), "estuary.strategies.baselines"),
    "crosslm": "estuary.strategies.crosslm",
    "distildp": "estuary.strategies.distildp",
    "dp_standalone": "estuary.strategies.dp_baselines",
    "dp_synthetic": "estuary.strategies.dp_baselines",
    "fdkt": "estuary.strategies.fdkt",
    "fedavg": "estuary.strategies.fedavg",
    "fedmkt": "estuary.strategies.fedmkt",
    "noop": "estuary.strategies.noop",
}


def register(cls: S) -> S:
    """Class decorator: make a Strategy available under `cls.name`."""
    name = getattr(cls, "name", None)
    if not name:
        raise TypeError(f"{cls.__name__} needs a class attribute `name` to be registered")
    existing = _REGISTRY.get(name)
    if existing is not None and existing.__qualname__ != cls.__qualname__:
        raise ValueError(f"strategy name {name!r} is taken by {existing.__module__}.{existing.__qualname__}")
    _REGISTRY[name] = cls
    return cls


def available() -> list[str]:
    """Every known method name (built-in or registered), without importing a strategy."""
    return sorted({*_REGISTRY, *BUILTINS})


def get(name: str) -> type[Strategy]:
    if name not in _REGISTRY and name in BUILTINS:
        importlib.import_module(BUILTINS[name])
    try:
        return _REGISTRY[name]
    except KeyError:
        close = difflib.get_close_matches(name, available(), n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        raise ConfigError(f"unknown method '{name}': {hint}known methods: {', '.join(available())}") from None


def server_uses(names: list[str]) -> set[str]:
    """What the methods `names` use the server LLM for (`Strategy.server_use`: serve, train), none for an empty set."""
    return {get(name).server_use for name in names} - {""}


def build_params(name: str, params: dict[str, Any], source: str = "config") -> Any:
    """Instantiate the registered strategy's config dataclass from a dict, with one-line errors."""
    return params_for(get(name), params, source)


def params_for(strategy_cls: type[Strategy], params: dict[str, Any], source: str = "config") -> Any:
    name = strategy_cls.name
    cls = strategy_cls.config_class
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in params:
        if key not in fields:
            close = difflib.get_close_matches(key, list(fields), n=1)
            hint = f"did you mean '{close[0]}'?" if close else f"known: {', '.join(fields) or '(none)'}"
            raise ConfigError(f"{source}: unknown key '{key}' in the parameters of '{name}' — {hint}")
    from pydantic import TypeAdapter, ValidationError

    try:
        return TypeAdapter(cls).validate_python(params)
    except ValidationError as err:
        e = err.errors()[0]
        where = ".".join(str(p) for p in e["loc"])
        if e["type"] in ("unexpected_keyword_argument", "extra_forbidden"):
            raise ConfigError(f"{source}: unknown key '{where}' in the parameters of '{name}' — see "
                              "`estuary methods` for the known ones") from None
        if e["type"] == "value_error" and not where:  # the config's own check (__post_init__) names its field
            raise ConfigError(f"{source}: parameters of '{name}': {e['msg'].removeprefix('Value error, ')}") from None
        raise ConfigError(
            f"{source}: parameter '{where}' of '{name}': {e['msg']} (got {e.get('input')!r})"
        ) from None


def validate_params(name: str, params: dict[str, Any], source: str = "config") -> None:
    build_params(name, params, source)


def describe(name: str) -> list[tuple[str, str, str]]:
    """(field, default, help) of a method's parameters; nested config dataclasses as `section.field`."""
    return _describe_fields(get(name).config_class, "")


def _describe_fields(cls: type, prefix: str, instance: Any = None) -> list[tuple[str, str, str]]:
    """Rows of a config dataclass; a nested one shows its parent's default for it (`instance`), not its own."""
    rows = []
    for f in dataclasses.fields(cls):
        default: Any = getattr(instance, f.name) if instance is not None else f.default
        factory: Any = f.default_factory
        if default is dataclasses.MISSING and factory is not dataclasses.MISSING:
            default = factory()
        if dataclasses.is_dataclass(default) and not isinstance(default, type):
            rows.append((prefix + f.name, "…", str(f.metadata.get("help", ""))))
            rows += _describe_fields(type(default), f"{prefix}{f.name}.", default)
            continue
        rows.append((prefix + f.name, repr(default), str(f.metadata.get("help", ""))))
    return rows
