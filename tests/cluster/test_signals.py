"""SIGTERM, as Docker, Kubernetes, systemd and `ray job stop` send it, to `estuary serve` and `estuary run` started
as commands (each in its own session, with its own local Ray cluster in a private temp dir; never the session
cluster of the other tests): exit code 143, one line, no process of theirs left, and for a run an interrupted,
resumable run folder that `estuary resume` finishes with the results of an uninterrupted run."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import REPO, free_port, tiny_job

pytestmark = pytest.mark.ray

ESTUARY = str(Path(sys.executable).parent / "estuary")
STOP_BOUND_S = 60  # cleanup + exit; estuary's own bound is ESTUARY_STOP_TIMEOUT_S (30 s) before it forces the exit


class Command:
    """One `estuary` command in its own session (so its process group is known), output to a file."""

    def __init__(self, args: list[str], cwd: Path, ray_tmp: str, program: tuple[str, ...] = (ESTUARY,)) -> None:
        self.ray_tmp = ray_tmp
        self.log = cwd / f"{Path(program[-1]).name}-{args[0].lstrip('-')}-{int(time.time() * 1000)}.log"
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # its own local cluster, always
        env.update(PYTHONPATH=f"{REPO / 'src'}", RAY_TMPDIR=ray_tmp, RAY_USAGE_STATS_ENABLED="0")
        with self.log.open("w") as out:
            self.proc = subprocess.Popen([*program, *args], cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, ready: Callable[[], bool], what: str, timeout_s: float = 600) -> None:
        deadline = time.monotonic() + timeout_s
        while not ready():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"never {what} (exit {self.proc.returncode}):\n{self.output()[-3000:]}")
            time.sleep(0.25)

    def stop(self, sig: int = signal.SIGTERM) -> tuple[int, float]:
        began = time.monotonic()
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=STOP_BOUND_S), time.monotonic() - began
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"still running {STOP_BOUND_S} s after the signal:\n{self.output()[-3000:]}")

    def alive(self) -> list[str]:
        """Live processes of its session or of its Ray cluster (their command lines name its temp dir)."""
        ps = subprocess.run(["ps", "-ww", "-eo", "pid=,sid=,stat=,args="], capture_output=True, text=True).stdout
        rows = [line.split(None, 3) for line in ps.splitlines() if len(line.split(None, 3)) == 4]
        return [f"{pid} {args[:120]}" for pid, sid, stat, args in rows
                if not stat.startswith("Z") and (sid == str(self.proc.pid) or self.ray_tmp in args)]

    def kill(self) -> None:
        """The test's own cleanup: SIGKILL whatever is left of this command (only its own processes)."""
        for row in self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(row.split()[0]), signal.SIGKILL)


def _no_process_left(cmd: Command) -> None:
    deadline = time.monotonic() + 10  # a SIGKILLed process may take a moment to disappear
    while cmd.alive() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert cmd.alive() == [], cmd.output()[-2000:]


def _stop_lines(out: str, prefix: str) -> list[str]:
    return [line for line in out.splitlines() if line.startswith(prefix)]


@pytest.fixture()
def ray_tmp() -> Iterator[str]:
    path = tempfile.mkdtemp(prefix="estsig-", dir="/tmp")  # short: Ray's socket paths have a length limit
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.mark.e2e
def test_sigterm_stops_serve_cleanly(tmp_path: Path, ray_tmp: str) -> None:
    from tests.serve.fixtures import need_model

    need_model()
    cmd = Command(["serve", "--model", "smollm2-135m", "--port", str(free_port()), "--kv-cache-gib", "1",
                   "--name", "estuary-sigterm"], tmp_path, ray_tmp)
    try:
        cmd.wait_for(lambda: "OpenAI-compatible" in cmd.output(), "served")
        assert any("raylet" in row for row in cmd.alive()), cmd.alive()  # the check below sees its Ray processes
        rc, took = cmd.stop()
        out = cmd.output()
        assert rc == 143, out[-3000:]
        assert _stop_lines(out, "SIGTERM") == [
            "SIGTERM: stopped the server LLM 'estuary-sigterm' and the local Ray cluster"], out[-3000:]
        assert "*** SIGTERM received" not in out and "Traceback" not in out
        _no_process_left(cmd)
        print(f"\n[serve] stopped in {took:.1f} s")
    finally:
        cmd.kill()


# Ray's handlers in the driver: ray.init installs its own SIGTERM handler, and its C++ failure-signal handler, whose
# uninstall in ray.shutdown set SIGTERM to the default action while the local cluster was being stopped: a second
# SIGTERM then ended the process on the spot (exit -15, no line, no final reap). The CLI's main runs it like this.
AROUND_RAY = """
import os, signal, threading, time
from estuary.shutdown import keep_ray_handler_out
keep_ray_handler_out()  # as estuary.cli.main does, before ray is imported
from estuary.config.experiment import RayConfig
from estuary.runtime import ensure_ray, shutdown_ray
from estuary.shutdown import StopSignals, stop_line
with StopSignals():
    try:
        ensure_ray(RayConfig(num_cpus=1, dashboard=False))
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(60)
    except KeyboardInterrupt as exc:
        print("first:", stop_line(exc), flush=True)
        threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGTERM)).start()  # a second one during ray.shutdown
        shutdown_ray()
        time.sleep(60)
"""


def test_sigterm_is_estuarys_after_ray_init_and_ray_shutdown(tmp_path: Path, ray_tmp: str) -> None:
    cmd = Command(["-c", AROUND_RAY], tmp_path, ray_tmp, program=(sys.executable,))
    try:
        assert cmd.proc.wait(timeout=300) == 143, cmd.output()[-3000:]
        out = cmd.output()
        assert "first: SIGTERM: stopped" in out and "second SIGTERM while stopping: forcing the exit" in out, out
        assert "*** SIGTERM received" not in out
        _no_process_left(cmd)
    finally:
        cmd.kill()


def _rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.exists() else []


@pytest.mark.usefixtures("ray_session")  # the uninterrupted run and the resume, in this process
def test_sigterm_interrupts_a_run_and_resume_finishes_it(tmp_path: Path, tiny_model_dir: Path, ray_tmp: str) -> None:
    from estuary.cli import main
    from estuary.platform.loading import load_config
    from estuary.platform.runner import run_experiment

    # Two clients on one worker, each task 2 s slower (a simulated slow device): round 2 outlasts the signal.
    slow = {"count": 2, "pool_size": 1, "groups": [{"name": "slow", "count": 2, "slowdown_s": 2.0}]}
    job = tiny_job(tmp_path, tiny_model_dir, baselines=[], rounds=2, clients=slow,
                   data={"train_size": 60, "test_size": 20}, ray={"num_cpus": 2, "dashboard": False},
                   output={"plots": False, "run_id": "full"})
    full = run_experiment(load_config(base=job), show_progress=False)
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump({**job, "output": {**job["output"], "run_id": "part"}}))
    part = tmp_path / "runs" / "part"

    cmd = Command(["run", str(path), "--no-progress"], tmp_path, ray_tmp)  # with its own local Ray cluster
    try:
        cmd.wait_for((part / "checkpoints/standalone/round-0001/COMPLETE").exists, "checkpointed round 1")
        assert any("raylet" in row for row in cmd.alive()), cmd.alive()
        rc, took = cmd.stop()
        out = cmd.output()
        assert rc == 143, out[-3000:]
        assert _stop_lines(out, "SIGTERM") == [
            f"SIGTERM: run interrupted (standalone checkpointed after round 1); continue with "
            f"`estuary resume {part}`"], out[-3000:]
        assert "*** SIGTERM received" not in out and "Traceback" not in out
        _no_process_left(cmd)
        print(f"\n[run] stopped in {took:.1f} s")
    finally:
        cmd.kill()
    summary = json.loads((part / "summary.json").read_text())
    assert (summary["status"], summary["signal"], "error" in summary) == ("interrupted", "SIGTERM", False)
    assert [r["round"] for r in _rows(part / "rounds.jsonl")] == [1]  # the completed round is kept

    assert main(["resume", str(part), "--no-progress"]) == 0  # on this process's cluster
    a = json.loads((full / "summary.json").read_text())
    b = json.loads((part / "summary.json").read_text())
    assert b["status"] == "complete" and "signal" not in b
    for key, value in a["strategies"]["standalone"]["metrics"].items():
        assert b["strategies"]["standalone"]["metrics"][key] == pytest.approx(value, abs=1e-6), key
    losses = {(r["round"], r["client"]): r["loss_last"] for r in _rows(full / "clients.jsonl")}
    resumed = {(r["round"], r["client"]): r["loss_last"] for r in _rows(part / "clients.jsonl")}
    assert len(resumed) == len(_rows(part / "clients.jsonl")) == 4  # each client round recorded once
    assert resumed == pytest.approx(losses, abs=1e-6)
