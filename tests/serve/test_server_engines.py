"""Engine injection and startup failures, on the shared Ray cluster (no vLLM start needed).

The deployment takes the engine class: the transformers reference engine serves the same in-cluster
interface; a failing engine, a missing model or a KV cache larger than memory end in one line, fast.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from estuary.errors import ModelNotAvailable
from estuary.serve.engine import Engine
from estuary.serve.types import GenerationParams, ServerStartupError

from .conftest import MODEL_DIR, free_port

pytestmark = [pytest.mark.ray]


class FailingEngine(Engine):
    """Fails the way a model that does not fit fails inside vLLM."""

    name = "failing"

    async def start(self) -> None:
        raise ServerStartupError("vLLM could not start 'x': ValueError: Available memory on node 0 (1.0 GiB) is "
                                 "less than requested memory for kv (64.0 GiB).")

    def stream(self, prompts: Any, params: Any, adapter: Any) -> Any:
        raise NotImplementedError

    async def topk(self, texts: Any, k: int, adapter: Any) -> Any:
        raise NotImplementedError

    async def load_adapter(self, version: Any) -> None:
        raise NotImplementedError


def _config(tmp_path: Path, **changes: Any) -> Any:
    from estuary.serve.config import ServerConfig

    base = dict(model=str(MODEL_DIR), port=free_port(), kv_cache_gib=1, max_model_len=256,
                resources={"num_cpus": 0}, adapter_root=str(tmp_path / "adapters"))
    return ServerConfig(**{**base, **changes})


def test_failing_engine_ends_in_one_line(ray_session: None, tmp_path: Path) -> None:
    if not (MODEL_DIR / "config.json").is_file():
        pytest.skip("SmolLM2 folder missing")
    from estuary.serve.launcher import start_server

    with pytest.raises(ServerStartupError) as info:
        start_server(_config(tmp_path, app_name="estuary-test-failing", route_prefix="/failing"),
                     engine=FailingEngine, timeout_s=600)
    message = str(info.value)
    # the engine's own reason, not the launcher's "not ready after 600 s": the failure was seen, not waited out
    assert "\n" not in message and "Available memory" in message and "estuary-test-failing" in message
    assert "not ready after" not in message


def test_preflight_failures(ray_session: None, tmp_path: Path) -> None:
    from estuary.serve.launcher import start_server

    with pytest.raises(ModelNotAvailable):
        start_server(_config(tmp_path, model="no-such-model-alias"))
    if (MODEL_DIR / "config.json").is_file():
        with pytest.raises(ServerStartupError, match="not enough memory.*kv_cache_gib"):
            start_server(_config(tmp_path, kv_cache_gib=4096))
        with pytest.raises(ServerStartupError, match=r"needs GPU=1.0 .*adjust server.resources.num_gpus$"):
            start_server(_config(tmp_path, resources={"num_gpus": 1}))


def test_unplaceable_replica_fails(ray_session: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A replica whose CPUs are held by client actors: one line naming the resources, not a wait forever
    (Serve reports it after 30 s; the grace period is cut to 0 here)."""
    if not (MODEL_DIR / "config.json").is_file():
        pytest.skip("SmolLM2 folder missing")
    import ray

    from estuary.serve import launcher

    @ray.remote(num_cpus=1)
    class Holder:
        def ready(self) -> bool:
            return True

    holder = Holder.remote()
    ray.get(holder.ready.remote())
    monkeypatch.setattr(launcher, "UNSCHEDULABLE_S", 0.0)
    try:
        with pytest.raises(ServerStartupError, match=r"no room for the replica: it needs \{.CPU.: 2\.0"):
            launcher.start_server(_config(tmp_path, app_name="estuary-test-unplaceable", resources={"num_cpus": 2},
                                          route_prefix="/unplaceable"), engine=FailingEngine, timeout_s=180)
    finally:
        ray.kill(holder)


@pytest.mark.e2e
def test_reference_engine_injected(ray_session: None, tmp_path: Path) -> None:
    """Same deployment, reference engine: in-cluster calls work; OpenAI routes answer 501, not a fake API."""
    if not (MODEL_DIR / "config.json").is_file():
        pytest.skip("SmolLM2 folder missing")
    from estuary.serve.launcher import start_server, stop_server
    from estuary.serve.reference import ReferenceEngine

    cfg = _config(tmp_path, app_name="estuary-test-ref", dtype="float32", route_prefix="/ref",
                  reference_batch_size=1)
    server = start_server(cfg, engine=ReferenceEngine, timeout_s=300)
    try:
        assert server.info()["engine"] == "reference"
        out = server.generate(["The movie was", "Once upon a time"], GenerationParams(max_tokens=6, temperature=0))
        assert [c.index for c in out] == [0, 1] and all(c.output_tokens for c in out)
        sampled = GenerationParams(max_tokens=6, temperature=1.0, seed=5)  # one batch per prompt: seed + i each
        same = server.generate(["The movie was"] * 3, sampled)
        assert len({c.text for c in same}) == 3 and same == server.generate(["The movie was"] * 3, sampled)
        payload = server.topk_logprobs(["a witty film"], k=3)
        assert payload.engine == "reference" and len(payload.texts[0].topk) == len(payload.texts[0].token_ids)
        req = urllib.request.Request(f"{server.base_url}/completions", data=json.dumps({"prompt": "x"}).encode(),
                                     headers={"Content-Type": "application/json"})
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(req, timeout=30)
        assert err.value.code == 501
    finally:
        stop_server(cfg.app_name)


@pytest.mark.e2e
def test_cli_serve(ray_session: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`estuary serve` end to end (reference engine: a vLLM start is the session fixture's): it deploys,
    answers a first token, prints where it listens, and stops cleanly."""
    if not (MODEL_DIR / "config.json").is_file():
        pytest.skip("SmolLM2 folder missing")
    from ray import serve

    from estuary.cli import main

    rc = main(["serve", "--model", str(MODEL_DIR), "--engine", "reference", "--name", "estuary-test-cli",
               "--set", f"adapter_root={tmp_path}", "--set", "route_prefix=/cli", "--set", "dtype=float32",
               "--exit-after-start"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "serving " in out and "http://127.0.0.1:" in out and "/cli/v1" in out and "first token" in out
    assert "estuary-test-cli" not in serve.status().applications, "the command removes its application"


@pytest.mark.gpu
def test_gpu_fraction(ray_session: None, tmp_path: Path) -> None:
    """On a GPU host: half a GPU, vLLM memory utilisation matched to it, CUDA_VISIBLE_DEVICES set by Ray."""
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    import ray

    if ray.cluster_resources().get("GPU", 0) < 0.5:
        pytest.skip("the test cluster has no GPU resource")
    from estuary.serve.launcher import start_server, stop_server

    cfg = _config(tmp_path, app_name="estuary-test-gpu", resources={"num_gpus": 0.5},
                  kv_cache_gib=None)
    assert cfg.memory_utilization() == 0.45 and not cfg.engine_in_process()
    server = start_server(cfg, timeout_s=600)
    try:
        assert server.info()["cuda_visible_devices"], "Ray gives the replica its own GPU(s)"
        assert server.generate(["Hello"], GenerationParams(max_tokens=4, temperature=0))[0].output_tokens > 0
    finally:
        stop_server(cfg.app_name)
