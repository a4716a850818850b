"""Ray Jobs: `estuary submit` runs `estuary run` on a cluster as a Ray Job; `estuary runs` lists runs.

The job file is validated here first (one-line errors before anything is uploaded). The submission's
runtime_env carries a small working directory holding the job file, the local `estuary` package as a
py_module (so the cluster runs the code you submit from; its dependencies come from the cluster's
install, see cluster.yaml) and Estuary's worker environment variables. The run id is fixed at submission,
so the Ray job (`estuary-<run id>`, metadata `estuary: run`) and the run folder name each other.
"""

from __future__ import annotations

import asyncio
import math
import os
import shlex
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TextIO

import estuary
from estuary.errors import ConfigError, EstuaryError
from estuary.platform.loading import load_config
from estuary.runtime import worker_env
from estuary.shutdown import TIMEOUT_ENV, timeout_from_env
from estuary.shutdown import exit_code as stop_exit_code

METADATA_KEY = "estuary"
EXIT_CODES = {"SUCCEEDED": 0, "FAILED": 1, "STOPPED": 130}
STOP_WAIT_ENV = "RAY_JOB_STOP_WAIT_TIME_S"


@dataclass
class Submission:
    """Everything `JobSubmissionClient.submit_job` is called with (built without a cluster, for tests)."""

    submission_id: str
    run_id: str
    entrypoint: str
    runtime_env: dict[str, Any]
    metadata: dict[str, str]
    entrypoint_num_cpus: float = 0.0
    entrypoint_num_gpus: float = 0.0
    entrypoint_resources: dict[str, float] = field(default_factory=dict)

    def kwargs(self) -> dict[str, Any]:
        return {
            "entrypoint": self.entrypoint,
            "submission_id": self.submission_id,
            "runtime_env": self.runtime_env,
            "metadata": self.metadata,
            "entrypoint_num_cpus": self.entrypoint_num_cpus,
            "entrypoint_num_gpus": self.entrypoint_num_gpus,
            "entrypoint_resources": self.entrypoint_resources or None,
        }


def package_dir() -> Path:
    """The `estuary` package folder this process imports (uploaded as a py_module)."""
    return Path(estuary.__file__).resolve().parent


def parse_pairs(pairs: list[str], what: str, number: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"{what} {pair!r}: expected NAME=VALUE")
        try:
            out[key] = float(value) if number else value
        except ValueError:
            raise ConfigError(f"{what} {pair!r}: {value!r} is not a number") from None
    return out


def build_submission(
    job: str,
    overrides: list[str],
    *,
    staging: Path,
    env: dict[str, str] | None = None,
    driver_cpus: float = 0.0,
    driver_gpus: float = 0.0,
    driver_resources: dict[str, float] | None = None,
    upload_code: bool = True,
) -> Submission:
    """Validate the job and lay out its working directory in `staging`; nothing is sent yet."""
    cfg = load_config(job, overrides)
    run_id = cfg.output.run_id or f"{cfg.name}-{datetime.now(timezone.utc):%Y%m%d-%H%M%S}"
    if not cfg.output.run_id:  # fixed here, so `estuary runs` and the run folder share it
        overrides = [*overrides, f"output.run_id={run_id}"]
    shutil.copyfile(job, staging / "job.yaml")
    args = ["estuary", "run", "job.yaml", "--no-progress"]
    for o in overrides:
        args += ["--set", o]
    # `ray job stop` sends SIGTERM, then SIGKILL after RAY_JOB_STOP_WAIT_TIME_S (Ray's default: 3 s): the driver's
    # cleanup (estuary.shutdown) gets its own bound and 10 s more. Ray's job supervisor gets the env_vars.
    stop_s = timeout_from_env({**os.environ, **(env or {})})
    stop = {TIMEOUT_ENV: f"{stop_s:g}", STOP_WAIT_ENV: str(math.ceil(stop_s) + 10)}
    runtime_env: dict[str, Any] = {"working_dir": str(staging), "env_vars": {**worker_env(), **stop, **(env or {})}}
    if upload_code:
        runtime_env["py_modules"] = [str(package_dir())]
    metadata = {METADATA_KEY: "run", "run_id": run_id, "name": cfg.name, "method": cfg.method,
                "job": Path(job).name, "output_dir": cfg.output.dir}
    return Submission(
        submission_id=f"estuary-{run_id}",
        run_id=run_id,
        entrypoint=shlex.join(args),
        runtime_env=runtime_env,
        metadata=metadata,
        entrypoint_num_cpus=driver_cpus,
        entrypoint_num_gpus=driver_gpus,
        entrypoint_resources=dict(driver_resources or {}),
    )


def client_for(address: str) -> Any:
    from ray.job_submission import JobSubmissionClient

    try:  # clusters with token authentication (Ray's default for new ones): send ~/.ray/auth_token
        from ray._private.authentication.authentication_token_setup import (
            maybe_enable_token_auth_if_token_available,
        )

        maybe_enable_token_auth_if_token_available(warn_if_disabled=False)
    except ImportError:
        pass
    try:
        return JobSubmissionClient(address)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise EstuaryError(f"cannot reach the Ray dashboard at {address!r} ({first}); "
                           "give --address http://HEAD:8265 (the dashboard port)") from None


async def _tail(client: Any, submission_id: str, out: TextIO) -> None:
    async for lines in client.tail_job_logs(submission_id):
        out.write(lines)
        out.flush()


def exit_code(client: Any, submission_id: str) -> int:
    """The job's exit code: the driver's own where Ray reports it, else from the terminal status."""
    info = client.get_job_info(submission_id)
    status = str(getattr(info.status, "value", info.status))
    code = getattr(info, "driver_exit_code", None)
    if code is not None and status != "STOPPED":
        return int(code)
    return EXIT_CODES.get(status, 1)


def submit(
    address: str,
    job: str,
    overrides: list[str],
    *,
    wait: bool = True,
    out: TextIO | None = None,
    log: TextIO | None = None,
    **build: Any,
) -> int:
    """Submit the run as a Ray Job; with `wait`, stream its logs (to `out`, default stdout) and return its
    exit code. Messages go to `log` (default stderr); both are looked up at call time, not import time."""
    out = out or sys.stdout
    log = log or sys.stderr
    staging = Path(tempfile.mkdtemp(prefix="estuary-submit-"))
    try:
        sub = build_submission(job, overrides, staging=staging, **build)
        client = client_for(address)
        sid = client.submit_job(**sub.kwargs())  # uploads the working dir and package before returning
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.write(f"submitted {sid} (run {sub.run_id}) to {address}\n")
    if not wait:
        log.write(f"follow it: ray job logs --follow {sid} --address {address}; status: estuary runs "
                  f"--address {address}\n")
        return 0
    try:
        asyncio.run(_tail(client, sid, out))
    except KeyboardInterrupt as exc:
        log.write(f"stopped following; the job keeps running (ray job stop {sid} --address {address})\n")
        return stop_exit_code(exc)
    except Exception as exc:  # the log stream broke: Ray raises RuntimeError when its websocket closes abnormally
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        log.write(f"{sid}: the log stream ended ({first[:200]})\n")
    code = exit_code(client, sid)
    status = str(client.get_job_status(sid))
    if status.endswith("STOPPED"):
        path = f"{sub.metadata['output_dir']}/{sub.run_id}"
        log.write(f"{sid}: STOPPED (exit code {code}); the run folder {path} on the cluster is interrupted and "
                  f"resumable: estuary resume {path}\n")
    else:
        log.write(f"{sid}: {status} (exit code {code})\n")
    return code


def local_runs(runs_dir: str | Path) -> list[dict[str, Any]]:
    """Run folders under `runs_dir` (those with a summary.json), newest first."""
    from estuary.platform.records import Recorder

    rows = []
    root = Path(runs_dir)
    for d in sorted(root.iterdir() if root.is_dir() else [], key=lambda p: p.stat().st_mtime, reverse=True):
        if not (d / "summary.json").is_file():
            continue
        s = Recorder(d).summary()
        done = [n for n, v in s.get("strategies", {}).items() if v.get("complete")]
        rows.append({"run": d.name, "method": s.get("method", "?"), "status": s.get("status", "?"),
                     "clients": s.get("clients"), "complete": ",".join(done), "path": str(d)})
    return rows


def cluster_runs(address: str) -> list[dict[str, Any]]:
    """Ray jobs submitted by `estuary submit` (metadata `estuary: run`), newest first."""
    jobs = [j for j in client_for(address).list_jobs() if (j.metadata or {}).get(METADATA_KEY) == "run"]
    jobs.sort(key=lambda j: j.start_time or 0, reverse=True)
    rows = []
    for j in jobs:
        started = datetime.fromtimestamp(j.start_time / 1000, timezone.utc) if j.start_time else None
        rows.append({"run": j.metadata.get("run_id", "?"), "method": j.metadata.get("method", "?"),
                     "status": str(getattr(j.status, "value", j.status)), "submission_id": j.submission_id,
                     "started": f"{started:%Y-%m-%d %H:%M:%S}" if started else "",
                     "path": f"{j.metadata.get('output_dir', '')}/{j.metadata.get('run_id', '')}"})
    return rows
