"""`estuary submit` and `estuary runs` (Ray Jobs); the logic is in `estuary.platform.jobs`."""

from __future__ import annotations

import argparse
import os

from rich.console import Console
from rich.table import Table


def _cmd_submit(args: argparse.Namespace) -> int:
    from estuary.platform.jobs import parse_pairs, submit

    return submit(
        args.address, args.job, args.set, wait=not args.no_wait,
        env=parse_pairs(args.env, "--env"),
        driver_cpus=args.driver_cpus, driver_gpus=args.driver_gpus,
        driver_resources=parse_pairs(args.driver_resource, "--driver-resource", number=True),
        upload_code=not args.no_upload_code,
    )


def _cmd_runs(args: argparse.Namespace) -> int:
    from estuary.platform.jobs import cluster_runs, local_runs

    out = Console(width=None if os.isatty(1) else 160)
    if args.address:
        rows = cluster_runs(args.address)
        table = Table("run", "method", "status", "submission id", "started (UTC)", "run folder (on the cluster)",
                      title=f"Estuary jobs on {args.address}")
        for r in rows:
            table.add_row(r["run"], r["method"], r["status"], r["submission_id"], r["started"], r["path"])
    else:
        rows = local_runs(args.dir)
        table = Table("run", "method", "status", "clients", "complete", "path", title=f"runs in {args.dir}")
        for r in rows:
            table.add_row(r["run"], r["method"], r["status"], str(r["clients"]), r["complete"], r["path"])
    out.print(table)
    if not rows:
        out.print("no runs found")
    return 0


def add_jobs_parser(sub: argparse._SubParsersAction) -> None:
    sp = sub.add_parser("submit", help="run an experiment on a Ray cluster as a Ray Job and stream its logs")
    sp.add_argument("job", help="job file, e.g. jobs/quickstart.yaml (validated here before submission)")
    sp.add_argument("--address", required=True, help="the cluster's dashboard, e.g. http://HEAD:8265")
    sp.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a field")
    sp.add_argument("--no-wait", action="store_true", help="return after submitting (do not stream logs)")
    sp.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                    help="extra environment variable of the job's processes (e.g. ESTUARY_DATA=/data)")
    sp.add_argument("--driver-cpus", type=float, default=0.0,
                    help="CPUs reserved for the driver (default 0: it mostly waits on the workers)")
    sp.add_argument("--driver-gpus", type=float, default=0.0, help="GPUs reserved for the driver")
    sp.add_argument("--driver-resource", action="append", default=[], metavar="NAME=AMOUNT",
                    help="custom resource the driver needs, e.g. estuary_driver=1 (the head of cluster.yaml)")
    sp.add_argument("--no-upload-code", action="store_true",
                    help="run the estuary installed on the cluster instead of uploading the local package")
    sp.set_defaults(fn=_cmd_submit)

    rp = sub.add_parser("runs", help="list runs: run folders here, or Estuary's Ray Jobs on a cluster")
    rp.add_argument("--address", help="list the Ray Jobs of this cluster's dashboard (http://HEAD:8265)")
    rp.add_argument("--dir", default="runs", help="parent folder of local run folders (output.dir)")
    rp.set_defaults(fn=_cmd_runs)
