"""estuary.shutdown without Ray: the first SIGTERM/SIGINT raises in the main thread so cleanup runs, a
second one (or a cleanup past the timeout) forces the exit, and no process the command started is left."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml

from estuary.platform.runner import mark_interrupted
from estuary.shutdown import Interrupted, exit_code, signal_name, stop_line
from tests.conftest import REPO

# A command in miniature: it starts a child process that starts its own (as `estuary run` starts a local Ray
# cluster), waits under StopSignals, and cleans up when stopped: it ends the child only, so the grandchild is
# orphaned (as `ray.shutdown` ends the dashboard before its forkserver); for `hang`, a cleanup that never ends.
SCRIPT = textwrap.dedent("""
    import subprocess, sys, time
    from estuary.shutdown import StopSignals, exit_code, exit_now, stop_line
    sleep = "import time; time.sleep(300)"
    quiet = "stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL"
    parent = f"import subprocess, sys; print(subprocess.Popen([sys.executable, '-c', {sleep!r}], {quiet}).pid); "
    child = subprocess.Popen([sys.executable, "-u", "-c", parent + sleep], stdout=subprocess.PIPE, text=True,
                             stderr=subprocess.DEVNULL)
    grandchild = int(child.stdout.readline())
    with StopSignals(timeout_s=float(sys.argv[1])):
        try:
            print("ready", grandchild, flush=True)
            time.sleep(120)
        except KeyboardInterrupt as exc:
            child.kill()
            child.wait()
            print("cleanup", flush=True)
            if sys.argv[2] == "hang":
                time.sleep(120)
            print(stop_line(exc), flush=True)
            code = exit_code(exc)
    exit_now(code)
""")


def _run(signals: list[int], timeout_s: float = 60.0, cleanup: str = "ok") -> tuple[int, str, int, float]:
    env = {**os.environ, "PYTHONPATH": f"{REPO / 'src'}"}
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT, str(timeout_s), cleanup], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True)
    assert proc.stdout is not None
    first = proc.stdout.readline()
    assert first.startswith("ready"), first
    grandchild = int(first.split()[1])
    began = time.monotonic()
    for i, sig in enumerate(signals):
        if i:
            while "cleanup" not in proc.stdout.readline():  # the second one while the first is being handled
                pass
        os.kill(proc.pid, sig)
    out, _ = proc.communicate(timeout=90)
    rc = proc.returncode
    return rc, out, grandchild, time.monotonic() - began


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except FileNotFoundError:
        return True
    return state == "Z"  # a zombie is dead (reaped by whoever adopted it)


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_runs_the_cleanup_and_exits_with_its_code(sig: int, code: int) -> None:
    rc, out, child, _ = _run([sig])
    name = signal.Signals(sig).name
    assert rc == code, out
    assert out.splitlines() == ["cleanup", f"{name}: stopped"]
    assert _gone(child)  # what the command started is ended too


def test_a_second_signal_forces_the_exit_without_orphans() -> None:
    rc, out, child, took = _run([signal.SIGTERM, signal.SIGTERM], cleanup="hang")
    assert rc == 143, out
    assert "second SIGTERM while stopping: forcing the exit" in out
    assert took < 30 and _gone(child)


def test_a_cleanup_past_the_timeout_is_cut_short() -> None:
    rc, out, child, took = _run([signal.SIGTERM], timeout_s=2, cleanup="hang")
    assert rc == 143, out
    assert "still stopping after 2 s: forcing the exit" in out
    assert 2 <= took < 30 and _gone(child)


def test_exit_codes_and_lines() -> None:
    term = Interrupted(signal.SIGTERM)
    assert (signal_name(term), exit_code(term), stop_line(term)) == ("SIGTERM", 143, "SIGTERM: stopped")
    assert (signal_name(KeyboardInterrupt()), exit_code(KeyboardInterrupt())) == ("SIGINT", 130)  # Ctrl-C


def test_an_interrupted_run_names_its_last_checkpoint(tmp_path: Path) -> None:
    (tmp_path / "checkpoints" / "standalone" / "round-0002").mkdir(parents=True)
    (tmp_path / "checkpoints" / "standalone" / "round-0002" / "COMPLETE").write_text("ok\n")
    (tmp_path / "checkpoints" / "standalone" / "round-0003").mkdir()  # no COMPLETE: a save cut short
    summary = {"status": "running", "error": "old", "strategies": {"zero_shot": {"complete": True}}}
    exc = Interrupted(signal.SIGTERM)
    mark_interrupted(summary, exc, tmp_path, ["zero_shot", "standalone"])
    assert summary == {"status": "interrupted", "signal": "SIGTERM", "strategies": {"zero_shot": {"complete": True}}}
    assert stop_line(exc) == (f"SIGTERM: run interrupted (zero_shot complete, standalone checkpointed after round 2); "
                              f"continue with `estuary resume {tmp_path}`")
    json.dumps(summary)  # still what Recorder.write_summary writes


def test_a_submitted_driver_has_time_to_stop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from estuary.platform.jobs import build_submission

    job = tmp_path / "j.yaml"
    job.write_text(yaml.safe_dump({"name": "x", "method": "noop", "baselines": []}))
    monkeypatch.delenv("ESTUARY_STOP_TIMEOUT_S", raising=False)
    env = build_submission(str(job), [], staging=tmp_path).runtime_env["env_vars"]
    assert (env["ESTUARY_STOP_TIMEOUT_S"], env["RAY_JOB_STOP_WAIT_TIME_S"]) == ("30", "40")  # Ray's default: 3 s
    env = build_submission(str(job), [], staging=tmp_path, env={"ESTUARY_STOP_TIMEOUT_S": "60.5"}).runtime_env
    assert (env["env_vars"]["ESTUARY_STOP_TIMEOUT_S"], env["env_vars"]["RAY_JOB_STOP_WAIT_TIME_S"]) == ("60.5", "71")
