"""`estuary serve`: the server LLM alone, OpenAI-compatible on 127.0.0.1:8000 unless told otherwise.

`add_serve_parser(sub)` registers the command on `estuary.cli`'s subparsers. The server section comes from
a job file (its `server:` section, model from `models.server`, validated with the whole job), then `--set`,
then the flags. Bad input or a failed start raises EstuaryError: one line, exit code 2.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from typing import Any

from estuary.errors import ConfigError

LOOPBACK = ("127.0.0.1", "localhost", "::1")
WATCH_EVERY_S = 5.0


def load_server_config(job: str | None, overrides: dict[str, Any], sets: list[str]) -> Any:
    """The ServerConfig of a job file (or the defaults), then `--set` (KEY or server.KEY), then flags."""
    from pydantic import ValidationError

    from estuary.config import ExperimentConfig
    from estuary.platform.loading import load_config
    from estuary.serve.config import ServerConfig

    top = set(ExperimentConfig.model_fields)
    assignments = [s if s.split("=", 1)[0].split(".", 1)[0] in top else f"server.{s}" for s in sets]
    cfg = load_config(job, assignments).server_config()
    flags = {k: v for k, v in overrides.items() if v is not None}
    if not flags:
        return cfg
    data = cfg.model_dump()
    if "num_gpus" in flags:  # --num-gpus
        data["resources"]["num_gpus"] = flags.pop("num_gpus")
    try:
        return ServerConfig.model_validate({**data, **flags})
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "server"
        raise ConfigError(f"server.{where}: {err['msg'].removeprefix('Value error, ')} "
                          f"(got {json.dumps(err.get('input'), default=str)})") from None


def _watch(app_name: str) -> None:
    """Serve until Ctrl-C. Serve replaces an unhealthy replica (a line says so); one that cannot be
    replaced, or the application being deleted, ends the command with one line."""
    from ray import serve
    from ray.serve.schema import ApplicationStatus

    from estuary.serve.types import ServerStartupError

    last = ApplicationStatus.RUNNING
    while True:
        time.sleep(WATCH_EVERY_S)
        app = serve.status().applications.get(app_name)
        status = app.status if app is not None else None
        if status is None or status == ApplicationStatus.DEPLOY_FAILED:
            why = " ".join((app.message if app else "the application was deleted").split())[:300]
            raise ServerStartupError(f"server LLM {app_name!r} stopped serving: {why or 'deploy failed'}")
        if status != last:
            print(f"server LLM {app_name!r}: {status.value.lower()}", file=sys.stderr, flush=True)
            last = status


def _cmd_serve(args: argparse.Namespace) -> int:
    started = time.monotonic()
    cfg = load_server_config(args.job, {
        "model": args.model, "host": args.host, "port": args.port, "engine": args.engine,
        "kv_cache_gib": args.kv_cache_gib, "num_gpus": args.num_gpus, "app_name": args.name,
        "enable_lora": False if args.no_lora else None,
    }, args.set)
    from estuary.models import resolve_model

    resolve_model(cfg.model)  # a missing model ends here, before Ray starts
    if cfg.host not in LOOPBACK:
        print(f"warning: listening on {cfg.host}:{cfg.port}, beyond loopback; the API has no authentication",
              file=sys.stderr)

    from estuary.config import RayConfig
    from estuary.runtime import ensure_ray, shutdown_ray
    from estuary.serve.launcher import start_server, stop_server
    from estuary.serve.types import GenerationParams

    # Ctrl-C and SIGTERM stop the server (estuary.shutdown, installed by estuary.cli.main), even where
    # SIGINT came in ignored (`estuary serve ... &` from a script, or a benchmark that starts it).
    owns_ray = ensure_ray(RayConfig(address=args.address, dashboard=False), args.address)
    try:
        server = start_server(cfg)
        server.generate(["Hello"], GenerationParams(max_tokens=1, temperature=0.0))
        first_token_s = time.monotonic() - started
        info = server.info()
        print(f"serving {info['model']} ({info['engine']}, {info['dtype']}) at {server.base_url} — OpenAI-compatible; "
              f"first token {first_token_s:.1f} s after start; Ctrl-C or SIGTERM stops", flush=True)
        if not args.exit_after_start:
            _watch(cfg.app_name)
        return 0
    except KeyboardInterrupt as exc:  # printed once stopped, by estuary.cli.main; exit code 130 / 143
        from estuary.shutdown import set_stop_line, signal_name

        set_stop_line(exc, f"{signal_name(exc)}: stopped the server LLM {cfg.app_name!r}"
                      + (" and the local Ray cluster" if owns_ray else ""))
        raise
    finally:
        with contextlib.suppress(Exception):
            stop_server(cfg.app_name)
        if owns_ray:
            shutdown_ray()


def add_serve_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register `estuary serve` on the CLI's subparsers (called by estuary.cli.build_parser)."""
    sp = subparsers.add_parser(
        "serve", help="serve the server LLM (OpenAI-compatible HTTP + in-cluster handle) until Ctrl-C",
        description="Serve the server LLM on Ray Serve with vLLM. Listens on 127.0.0.1:8000 unless --host/--port "
                    "(or the job's server: section) say otherwise; --host must be given to listen beyond loopback.",
    )
    sp.add_argument("job", nargs="?", help="job file whose server: section (and models.server) to serve (optional)")
    sp.add_argument("--model", help="model alias, folder or hub id (default: qwen2.5-0.5b)")
    sp.add_argument("--host", help="listen address (default 127.0.0.1)")
    sp.add_argument("--port", type=int, help="listen port (default 8000)")
    sp.add_argument("--engine", choices=["vllm", "reference"], help="engine (default vllm)")
    sp.add_argument("--kv-cache-gib", type=float, help="KV-cache size in GiB")
    sp.add_argument("--num-gpus", type=float, help="server.resources.num_gpus: GPUs for the replica (a fraction "
                    "shares one)")
    sp.add_argument("--name", help="Serve application name (default estuary-llm)")
    sp.add_argument("--no-lora", action="store_true", help="serve without LoRA adapter versions")
    sp.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a server field (e.g. --set max_model_len=4096)")
    sp.add_argument("--address", help="existing Ray cluster (default: start a local one)")
    sp.add_argument("--exit-after-start", action="store_true", help=argparse.SUPPRESS)  # smoke tests
    sp.set_defaults(fn=_cmd_serve)
    return sp
