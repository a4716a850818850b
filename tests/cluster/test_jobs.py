"""`estuary submit` / `estuary runs` against a real local Ray head (its own ports and temp dir), started here
with `ray start --head --block` in a subprocess and stopped by ending that process (never `ray stop`)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from estuary.cli import main
from tests.conftest import REPO, free_ports

pytestmark = pytest.mark.ray

PORT_FLAGS = ("--port", "--dashboard-port", "--node-manager-port", "--object-manager-port", "--metrics-export-port",
              "--dashboard-agent-listen-port", "--dashboard-agent-grpc-port", "--runtime-env-agent-port",
              "--ray-client-server-port")


def _own_processes(tmp: str) -> list[int]:
    """Processes of this head (their command lines name its temp dir)."""
    out = subprocess.run(["ps", "-eo", "pid=,args="], capture_output=True, text=True).stdout
    return [int(line.split(None, 1)[0]) for line in out.splitlines() if tmp in line]


@pytest.fixture(scope="module")
def ray_head() -> Iterator[str]:
    from estuary.data import find_data_root

    tmp = tempfile.mkdtemp(prefix="estjob-", dir="/tmp")
    ports = dict(zip(PORT_FLAGS, free_ports(len(PORT_FLAGS)), strict=True))
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ.get('PATH', '')}", "ESTUARY_DATA": str(find_data_root()),
           "PYTHONPATH": f"{REPO / 'src'}", "RAY_USAGE_STATS_ENABLED": "0"}
    cmd = [str(bin_dir / "ray"), "start", "--head", "--block", "--num-cpus=1", "--include-dashboard=true",
           "--dashboard-host=127.0.0.1", f"--temp-dir={tmp}",
           *(f"{flag}={port}" for flag, port in ports.items())]
    log = open(Path(tmp) / "head.log", "w")  # noqa: SIM115
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=tmp)
    url = f"http://127.0.0.1:{ports['--dashboard-port']}"
    try:
        deadline = time.time() + 90
        while True:
            try:
                with urllib.request.urlopen(f"{url}/api/version", timeout=2):
                    break
            except urllib.error.HTTPError:  # 401: up, with token authentication
                break
            except OSError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                pytest.fail(f"ray head did not start: {(Path(tmp) / 'head.log').read_text()[-2000:]}")
            time.sleep(1)
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        time.sleep(2)
        for pid in _own_processes(tmp):  # anything the reaper missed: only this head's own processes
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        log.close()
        shutil.rmtree(tmp, ignore_errors=True)


def _job(tmp_path: Path) -> Path:
    job = {
        "name": "jobs", "method": "noop", "baselines": [], "rounds": 2, "seed": 0,
        "data": {"task": "sst2", "partition": "iid", "train_size": 60, "test_size": 10, "min_client_size": 2},
        "clients": {"count": 3, "pool_size": 1, "resources": {"num_cpus": 0.5}},
        "evaluation": {"server": False},
        "output": {"dir": str(tmp_path / "runs"), "plots": False},
    }
    path = tmp_path / "noop.yaml"
    path.write_text(yaml.safe_dump(job))
    return path


def test_submit_streams_logs_and_runs_lists_it(
    ray_head: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    job = _job(tmp_path)
    rc = main(["submit", str(job), "--address", ray_head, "--set", "output.run_id=ok"])
    out, err = capsys.readouterr()
    assert rc == 0, out[-3000:] + err[-2000:]
    assert "submitted estuary-ok" in err
    assert "run folder:" in out  # the driver's own last line, streamed from the job's logs
    summary = json.loads((tmp_path / "runs" / "ok" / "summary.json").read_text())
    assert summary["status"] == "complete" and summary["method"] == "noop"
    rounds = [json.loads(x) for x in (tmp_path / "runs" / "ok" / "rounds.jsonl").read_text().splitlines()]
    assert [r["clients_ok"] for r in rounds] == [3, 3]

    # A job that fails on the cluster (its data folder is missing there): the exit code comes back.
    rc = main(["submit", str(job), "--address", ray_head, "--set", "output.run_id=bad",
               "--env", "ESTUARY_DATA=/nonexistent-estuary-data"])
    out, err = capsys.readouterr()
    assert rc == 2, out[-3000:] + err[-2000:]
    assert "ESTUARY_DATA='/nonexistent-estuary-data' is not a folder" in out

    assert main(["runs", "--address", ray_head]) == 0
    listed = capsys.readouterr().out
    assert "estuary-ok" in listed and "SUCCEEDED" in listed and "estuary-bad" in listed and "FAILED" in listed
    assert main(["runs", "--dir", str(tmp_path / "runs")]) == 0
    local = capsys.readouterr().out
    assert "ok" in local and "complete" in local


def test_ray_job_stop_interrupts_the_run_resumably(ray_head: str, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """`ray job stop` sends the driver SIGTERM: the job is STOPPED, the run folder interrupted (its checkpointed
    round kept), and `estuary submit`, following the logs, ends with one line saying so."""
    from estuary.platform.jobs import client_for

    job = _job(tmp_path)
    spec = yaml.safe_load(job.read_text())
    spec["rounds"] = 3
    spec["clients"]["groups"] = [{"name": "slow", "count": 3, "slowdown_s": 2.0}]  # a round outlasts the stop
    job.write_text(yaml.safe_dump(spec))
    run = tmp_path / "runs" / "stopped"

    def stop_after_round_1() -> None:
        deadline = time.time() + 300
        while not (run / "checkpoints" / "noop" / "round-0001" / "COMPLETE").exists() and time.time() < deadline:
            time.sleep(0.25)
        client_for(ray_head).stop_job("estuary-stopped")

    stopper = threading.Thread(target=stop_after_round_1, daemon=True)
    stopper.start()
    rc = main(["submit", str(job), "--address", ray_head, "--set", "output.run_id=stopped"])
    stopper.join(timeout=60)
    out, err = capsys.readouterr()
    assert rc == 130, out[-3000:] + err[-2000:]
    # submit's own last line (its stderr may also hold pytest artefacts: Ray's log handler bound to an earlier
    # test's closed capture stream prints "--- Logging error ---" tracebacks)
    assert err.strip().splitlines()[-1] == (f"estuary-stopped: STOPPED (exit code 130); the run folder {run} on the "
                                            f"cluster is interrupted and resumable: estuary resume {run}"), err[-2000:]
    assert "Traceback" not in out, out[-3000:]  # the driver's output, streamed
    assert "SIGTERM: run interrupted (noop checkpointed after round " in out, out[-3000:]
    print("\n" + "\n".join(out.strip().splitlines()[-1:] + err.strip().splitlines()[-1:]))
    assert str(client_for(ray_head).get_job_status("estuary-stopped")).endswith("STOPPED")
    summary = json.loads((run / "summary.json").read_text())
    assert (summary["status"], summary["signal"]) == ("interrupted", "SIGTERM"), out[-3000:]
    rounds = [json.loads(x)["round"] for x in (run / "rounds.jsonl").read_text().splitlines()]
    assert rounds[0] == 1 and rounds == list(range(1, len(rounds) + 1)) and len(rounds) < 3
