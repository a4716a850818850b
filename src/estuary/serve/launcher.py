"""Start and stop the server LLM application; startup failures end in one line, never a hang."""

from __future__ import annotations

import logging
import re
import socket
import time
from pathlib import Path
from typing import Any

import ray
from ray import serve

from estuary.serve.client import ServerLLM
from estuary.serve.config import ServerConfig
from estuary.serve.engine import Engine
from estuary.serve.types import ServerStartupError

log = logging.getLogger(__name__)
UNSCHEDULABLE_S = 90.0  # Serve reports an unplaceable replica after 30 s; give the cluster a minute more
_UNSCHEDULED = re.compile(r"to be scheduled\..*?Resources required for each replica: (?P<need>\{.*?\}), "
                          r"total resources available: (?P<have>\{.*?\})", re.S)
_ERROR_LINE = re.compile(r"\b((?:ServerStartupError|ModelNotAvailable|InvalidRequest|ValueError|RuntimeError|"
                         r"MemoryError|OSError|ImportError|\w+Error|\w+Exception)): (.+)")


def server_app(config: ServerConfig, engine: str | type[Engine] | None = None) -> Any:
    """The Serve application of the server LLM (`engine`: a name, 'module:Class' or an Engine subclass)."""
    from estuary.serve.deployment import LLMServer

    return LLMServer.options(  # type: ignore[attr-defined]
        name=config.app_name,
        num_replicas=config.num_replicas,
        max_ongoing_requests=config.max_ongoing_requests,
        ray_actor_options=config.actor_options(),
        max_constructor_retry_count=1,  # a model that does not load will not load on the 20th try either
        health_check_period_s=10,
        health_check_timeout_s=120,  # a busy CPU replica answers late; it is not dead
        graceful_shutdown_wait_loop_s=1,
        graceful_shutdown_timeout_s=15,
    ).bind(config.model_dump(mode="json"), engine or config.engine)


def _weights_gib(model_path: str, dtype: str) -> float:
    folder = Path(model_path)
    if not folder.is_dir():
        return 0.0
    size = sum(p.stat().st_size for p in folder.glob("*.safetensors")) or sum(
        p.stat().st_size for p in folder.glob("*.bin"))
    disk_bytes_per_param = 4.0  # the converted models are fp32 on disk
    return size / 2**30 * ({"float32": 4.0}.get(dtype, 2.0) / disk_bytes_per_param)


def preflight(config: ServerConfig) -> str:
    """Checks before deploying: the model resolves offline, memory and resources suffice. Returns the model path."""
    import psutil

    from estuary.models import resolve_model

    model_path = resolve_model(config.model)  # ModelNotAvailable: one line naming the fix
    if not config.on_gpu:
        need = _weights_gib(model_path, config.resolved_dtype()) + (config.kv_cache_bytes() or 0) / 2**30 + 0.5
        avail = psutil.virtual_memory().available / 2**30
        if need > avail:
            raise ServerStartupError(
                f"not enough memory for the server LLM {config.model!r}: needs about {need:.1f} GiB (weights + "
                f"kv_cache_gib={config.kv_cache_gib} + overhead), {avail:.1f} GiB available; lower "
                "server.kv_cache_gib or free memory")
    if ray.is_initialized():
        have = ray.cluster_resources()
        for key, amount in config.resources.bundle().items():
            if have.get(key, 0) < amount:
                raise ServerStartupError(
                    f"the server LLM needs {key}={amount} but the Ray cluster has {have.get(key, 0)}; "
                    f"adjust server.resources.{config.resources.field_of(key)}")
    return model_path


def _reason(text: str) -> str:
    """The most telling line of a deployment failure message (the replica's exception)."""
    hits = _ERROR_LINE.findall(text or "")
    for preferred in ("ServerStartupError", "ModelNotAvailable", "InvalidRequest"):
        for kind, msg in hits:
            if kind == preferred:
                return msg.strip()[:500]
    if hits:
        kind, msg = hits[-1]
        return f"{kind}: {msg.strip()}"[:500]
    lines = [ln.strip() for ln in (text or "").splitlines() if ln.strip()]
    return (lines[-1] if lines else "no message")[:500]


def _unschedulable(text: str) -> str | None:
    """Serve's 'replicas ... taken more than 30s to be scheduled' message, as one line (None if absent)."""
    m = _UNSCHEDULED.search(text or "")
    if m is None:
        return None
    return (f"the Ray cluster has no room for the replica: it needs {m.group('need')}, available "
            f"{m.group('have')}; lower server.resources (num_cpus, num_gpus, custom) or free them")


def wait_until_running(app_name: str, timeout_s: float, poll_s: float = 1.0,
                       unschedulable_s: float | None = None) -> None:
    """Block until the application runs; on failure or timeout delete it and raise ServerStartupError.

    A replica the cluster cannot place (its CPUs/GPUs held by other actors) fails after `unschedulable_s`.
    """
    from ray.serve.schema import ApplicationStatus

    began = time.monotonic()
    deadline = began + timeout_s
    unschedulable_s = UNSCHEDULABLE_S if unschedulable_s is None else unschedulable_s
    last = ""
    while time.monotonic() < deadline:
        app = serve.status().applications.get(app_name)
        if app is not None:
            if app.status == ApplicationStatus.RUNNING:
                return
            messages = [app.message, *(d.message for d in app.deployments.values())]
            last = "\n".join(m for m in messages if m)
            if app.status in (ApplicationStatus.DEPLOY_FAILED, ApplicationStatus.UNHEALTHY):
                serve.delete(app_name, _blocking=False)
                raise ServerStartupError(f"server LLM {app_name!r} failed to start: {_reason(last)}")
            stuck = _unschedulable(last)
            if stuck and time.monotonic() - began > unschedulable_s:
                serve.delete(app_name, _blocking=False)
                raise ServerStartupError(f"server LLM {app_name!r} cannot start: {stuck}")
        time.sleep(poll_s)
    serve.delete(app_name, _blocking=False)
    detail = _reason(last) if last else "no replica reported"
    raise ServerStartupError(f"server LLM {app_name!r} not ready after {timeout_s:.0f} s ({detail}); raise "
                             "server.startup_timeout_s or check the Ray logs")


def _serve_running() -> bool:
    try:
        from ray.serve.context import _get_global_client

        _get_global_client()
    except Exception:
        return False
    return True


def check_port_free(host: str, port: int) -> None:
    """ServerStartupError if this host cannot listen on host:port (Serve's proxy would fail there in a loop)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise ServerStartupError(f"cannot listen on {host}:{port} ({exc.strerror or exc}); is another server "
                                     "using it? pick another port (--port / server.port)") from None


def start_server(config: ServerConfig, engine: str | type[Engine] | None = None, *,
                 timeout_s: float | None = None) -> ServerLLM:
    """Deploy the server LLM on the connected Ray cluster (HTTP on config.host:config.port) and wait for it."""
    preflight(config)
    if not _serve_running():  # this call starts Serve's HTTP proxy here: its port must be free
        check_port_free(config.host, config.port)
    logs = {"log_level": config.log_level, "enable_access_log": config.log_level in ("DEBUG", "INFO")}
    logging.getLogger("ray.serve").setLevel(config.log_level)  # this process's Serve client
    serve.start(http_options={"host": config.host, "port": config.port}, logging_config=logs)
    serve.run_many(
        [serve.RunTarget(target=server_app(config, engine), name=config.app_name, route_prefix=config.route_prefix,
                         logging_config=logs)],
        wait_for_applications_running=False,
    )
    wait_until_running(config.app_name, timeout_s or config.startup_timeout_s)
    host, port = _http_address(config)
    prefix = config.route_prefix.rstrip("/")
    return ServerLLM(config.app_name, base_url=f"http://{_connect_host(host)}:{port}{prefix}/v1")


def _http_address(config: ServerConfig) -> tuple[str, int]:
    """Where Serve's HTTP proxy really listens: it keeps the options of the first serve.start in a cluster."""
    try:
        from ray.serve.context import _get_global_client

        http = _get_global_client().http_config  # type: ignore[union-attr]
        host, port = str(http.host), int(http.port)
    except Exception:
        return config.host, config.port
    if (host, port) != (config.host, config.port):
        log.warning("Serve already listens on %s:%s (set when Serve first started in this cluster); "
                    "server.host/port (%s:%s) do not apply", host, port, config.host, config.port)
    return host, port


def _connect_host(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "::", "") else host


def stop_server(app_name: str = "estuary-llm") -> None:
    """Delete the application (its replicas release the model)."""
    if app_name in serve.status().applications:
        serve.delete(app_name)
