"""Ray runtime: a local cluster by default (the embedded default), or an existing one."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

import ray

from estuary.config import RayConfig
from estuary.errors import EstuaryError
from estuary.shutdown import around_ray_init, reinstall


def worker_env() -> dict[str, str]:
    """Environment of Estuary's worker processes: offline hub, quiet tokenizers and progress bars."""
    return {
        "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1"),
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "TRANSFORMERS_VERBOSITY": "error",
    }


def dashboard_sign_in(url: str) -> str:
    """The console line of a local cluster's dashboard: where it is and, under Ray's token authentication (Ray 2.60
    turns it on for a new local cluster and writes the token to ~/.ray/auth_token), how to sign in."""
    url = url if "://" in url else f"http://{url}"
    if os.environ.get("RAY_AUTH_MODE", "").lower() != "token":
        return f"Ray dashboard: {url}"
    if os.environ.get("RAY_AUTH_TOKEN"):
        where = "the token in $RAY_AUTH_TOKEN"
    else:
        path = os.environ.get("RAY_AUTH_TOKEN_PATH") or "~/.ray/auth_token"
        where = f"the token in {path} (`ray get-auth-token` prints it)"
    return (f"Ray dashboard: {url} — sign in with {where}; its Metrics tab charts nothing without a Prometheus "
            "and a Grafana you run (README, Dashboard); the offline charts are TensorBoard's")


def in_ray_job() -> bool:
    """Whether this process is a Ray Job's driver (`estuary submit`)."""
    return "RAY_JOB_CONFIG_JSON_ENV_VAR" in os.environ


def cluster_address(cfg: RayConfig, address: str | None = None) -> str | None:
    """The Ray cluster a run joins: --address, ray.address, $ESTUARY_RAY_ADDRESS, or a Ray Job's own cluster;
    None when it starts a local one (whose node is this machine: the preflights size it before Ray starts)."""
    addr = address or cfg.address or os.environ.get("ESTUARY_RAY_ADDRESS")
    if in_ray_job():
        addr = addr or os.environ.get("RAY_ADDRESS") or "auto"
    return addr or None


def ensure_ray(cfg: RayConfig, address: str | None = None, log: Callable[[str], None] | None = None) -> bool:
    """Connect to (or start) Ray. Returns True if this call started/connected it (and should shut
    it down), False if Ray was already initialised in this process (tests, notebooks). A local cluster's
    dashboard address and how to sign in go to `log`."""
    if ray.is_initialized():
        return False
    addr = cluster_address(cfg, address)
    # Workers import estuary from this process's environment; keep their logs quiet.
    env: dict[str, Any] | None = {"env_vars": worker_env()}
    if in_ray_job():
        # A Ray Job's driver (`estuary submit`): the job's runtime_env (which carries worker_env) applies, and
        # Ray refuses a second one naming the same variables; the cluster is the job's own.
        env = None
    # The local cluster's token authentication stays on; its notice is not news to a run's user.
    logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
    try:
        with around_ray_init():  # Ray installs its own SIGTERM handler; Estuary's is put back after it
            if addr:
                ray.init(address=addr, runtime_env=env, logging_level=logging.WARNING, log_to_driver=True)
            else:
                info = ray.init(
                    num_cpus=cfg.num_cpus,
                    include_dashboard=cfg.dashboard,
                    runtime_env=env,
                    logging_level=logging.WARNING,
                    log_to_driver=True,
                )
                url = getattr(info, "dashboard_url", None)
                if log is not None and cfg.dashboard and url:
                    log(dashboard_sign_in(url))
    except ConnectionError as exc:
        raise EstuaryError(f"cannot reach the Ray cluster at {addr!r} ({exc}); check --address / ray.address") from None
    return True


def share(value: Any) -> Any:
    """One copy of `value` for many client tasks of a round: put in the object store once under Ray (the
    ObjectRef travels in each `ClientTask.params`), else the value itself. `resolve` reads it back."""
    return ray.put(value) if ray.is_initialized() else value


def resolve(value: Any) -> Any:
    """What `share` stored: fetched from the object store when it is an ObjectRef, else `value` as it is."""
    return ray.get(value) if isinstance(value, ray.ObjectRef) else value


def shutdown_ray() -> None:
    """`ray.shutdown()` (of a local cluster: its processes end), then Estuary's signal handlers again (where Ray's
    C++ failure-signal handler is on, its uninstall resets SIGTERM to the default action: see estuary.shutdown)."""
    ray.shutdown()
    reinstall()
