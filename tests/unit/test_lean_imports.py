"""A `noop` run imports what it needs when it needs it: its driver (entry points, job loading, the strategy, SST-2's
data, round checkpoints) and its workers (a task) load no torch, transformers, vLLM or PEFT, and a worker builds no
data for a step that never reads it. Each check runs in a fresh interpreter (`python -c`): this one has loaded them
all."""

from __future__ import annotations

import importlib
import json
import os
import pkgutil
import subprocess
import sys
import textwrap
from pathlib import Path

import estuary.strategies
from estuary import registry

SRC = Path(__file__).resolve().parents[2] / "src"
MODEL_CODE = ("torch", "transformers", "vllm", "peft", "accelerate", "opacus", "deepspeed")
DATA_CODE = ("datasets", "pandas")
NOOP_JOB = {"name": "lean", "method": "noop", "baselines": [], "rounds": 1,
            "data": {"task": "sst2", "partition": "iid", "min_client_size": 2},
            "clients": {"count": 4}, "evaluation": {"server": False}}


def _run(code: str) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env,
                         timeout=180)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_noop_driver_imports_no_model_code(tmp_path: Path) -> None:
    job = {**NOOP_JOB, "output": {"dir": str(tmp_path)}}
    loaded = _run(f"""
        import json, sys
        from estuary.platform.loading import load_config
        from estuary.platform.runner import run_experiment
        entry = sorted(sys.modules)
        from estuary.registry import get
        from estuary.data.federated import build_federated_data
        cfg = load_config(base={job!r})
        get(cfg.method)
        data = build_federated_data(cfg.data.model_dump_json(), cfg.clients.count, cfg.seed)
        assert len(data.clients) == 4 and data.test
        from estuary.platform.model_fit import model_lines
        assert model_lines(cfg, dict()) == []  # the run's model checks: noop's clients load no model
        print(json.dumps({{"entry": entry, "job": sorted(sys.modules)}}))
    """)
    for when in ("entry", "job"):
        assert not [m for m in MODEL_CODE if m in loaded[when]], when
    assert not [m for m in DATA_CODE if m in loaded["job"]]  # SST-2's label-lines files: read without `datasets`
    others = [m for m in loaded["job"] if m.startswith("estuary.strategies.")
              and m not in ("estuary.strategies.noop", "estuary.strategies.noop_config")]
    assert not others, others  # the registry imported the noop strategy's module only
    assert "estuary.lm.model" not in loaded["job"]


def test_noop_worker_task_imports_no_model_or_data_code() -> None:
    loaded = _run(f"""
        import json, sys
        from estuary.client.worker import ClientWorker
        from estuary.platform.loading import load_config
        from estuary.registry import get
        from estuary.wire import ClientTask
        cfg = load_config(base={NOOP_JOB!r})
        worker = ClientWorker(cfg.model_dump_json(), {{}}, "w", 1)
        egress, state = ClientWorker.run_task(worker, get("noop"), ClientTask("c001", 1), None)
        assert state.rounds_trained == 1 and egress.client_id == "c001"
        print(json.dumps(sorted(sys.modules)))
    """)
    assert not [m for m in (*MODEL_CODE, *DATA_CODE) if m in loaded]


def test_checkpoint_without_torch_reads_back_with_and_without_it(tmp_path: Path) -> None:
    import torch

    from estuary.platform.checkpoint import Checkpointer

    loaded = _run(f"""
        import json, sys
        from pathlib import Path
        from estuary.platform.checkpoint import Checkpointer
        from estuary.wire import ClientState
        ck = Checkpointer(Path({str(tmp_path)!r}))
        ck.save("noop", 1, {{"c000": ClientState("c000", "m", optimizer={{"step": 2}}, rounds_trained=1)}},
                {{"k": 3}}, {{"m": 1.0}})
        states, driver, metrics = ck.load("noop", 1)
        assert states["c000"].rounds_trained == 1 and driver == {{"k": 3}} and metrics == {{"m": 1.0}}
        print(json.dumps(sorted(sys.modules)))
    """)
    assert "torch" not in loaded
    states, driver_state, _ = Checkpointer(tmp_path).load("noop", 1)  # torch loaded here: the same states
    assert states["c000"].optimizer == {"step": 2} and driver_state == {"k": 3}
    # with torch loaded, a shard holding tensors is torch's format, as before
    ck = Checkpointer(tmp_path / "t")
    from estuary.wire import ClientState

    ck.save("s", 1, {"c000": ClientState("c000", "m", adapter={"w": torch.ones(2)})}, {"g": torch.zeros(1)}, {})
    assert torch.load(tmp_path / "t/checkpoints/s/round-0001/clients-00000.pt", weights_only=False)["c000"]["adapter"]
    states, driver_state, _ = ck.load("s", 1)
    assert torch.equal(states["c000"].adapter["w"], torch.ones(2)) and torch.equal(driver_state["g"], torch.zeros(1))


def test_builtins_name_the_module_of_every_built_in_strategy() -> None:
    for info in pkgutil.iter_modules(estuary.strategies.__path__):
        importlib.import_module(f"estuary.strategies.{info.name}")
    built_in = {name: cls.__module__ for name, cls in registry._REGISTRY.items()
                if cls.__module__.startswith("estuary.strategies.")}
    assert built_in == registry.BUILTINS
