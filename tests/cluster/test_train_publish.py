"""A trained server adapter published to a live Serve deployment becomes its next version, and changes that
version's outputs only: the base model and earlier versions answer as before.

The deployment is the serving package's own (`estuary.serve.launcher.start_server`) with the transformers
reference engine on the tiny model, so the test needs no vLLM start; the vLLM engine loads published
versions through the same `LLMServer.publish` path (tests/serve).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from estuary.errors import ConfigError
from estuary.train import TrainConfig, train_and_publish
from tests.cluster.test_train import sst2_records
from tests.conftest import build_tiny_model, free_port

pytestmark = [pytest.mark.ray, pytest.mark.usefixtures("ray_session")]
launcher = pytest.importorskip("estuary.serve.launcher", reason="the serving package is not importable")
APP = "estuary-test-train-publish"
PROBE = ["review : a fine and moving film sentiment :", "review : dull sentiment :"]


@pytest.fixture(scope="module")
def served(ray_session: None, tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from estuary.serve.config import ServerConfig
    from estuary.serve.reference import ReferenceEngine

    cfg = ServerConfig(model=str(tiny_model_dir), engine="reference", dtype="float32", port=free_port(),
                       app_name=APP, route_prefix="/train-publish", max_model_len=128, kv_cache_gib=0.25,
                       resources={"num_cpus": 0}, adapter_root=str(tmp_path_factory.mktemp("published")))
    server = launcher.start_server(cfg, engine=ReferenceEngine, timeout_s=300)
    yield server
    launcher.stop_server(APP)


def _logprobs(server: Any, adapter: str | None) -> list[list[float]]:
    payload = server.topk_logprobs(PROBE, k=3, adapter=adapter)
    return [[lp for pos in text.topk for lp in pos.logprobs] for text in payload.texts]


def _close(a: list[list[float]], b: list[list[float]]) -> bool:
    return all(abs(x - y) < 1e-5 for ra, rb in zip(a, b) for x, y in zip(ra, rb)) and len(a) == len(b)


def test_trained_adapter_becomes_the_next_live_version(tmp_path: Path, tiny_model_dir: Path, served: Any) -> None:
    cfg = TrainConfig.load(dict(
        model=str(tiny_model_dir), workers=2, steps=4, micro_batch_size=4, max_length=32, lr=5e-2,
        checkpoint_every=2, keep_checkpoints=2, lora={"r": 4, "alpha": 8, "dropout": 0.0}, resource_wait_s=60,
    ))
    base = _logprobs(served, None)
    outcome, v1 = train_and_publish(sst2_records(16), cfg, served, adapter_name="server", name="publish",
                                    storage_path=tmp_path / "train")
    assert v1.id == "server@v1" and v1.rank == 4 and Path(v1.path).is_dir()
    trained = _logprobs(served, "server@v1")
    assert not _close(trained, base), "the published adapter must change its version's outputs"
    assert _close(_logprobs(served, None), base), "publishing must not change the base model's outputs"
    assert _close(_logprobs(served, "server"), trained)  # the bare name follows the latest version

    # The job's earlier checkpoint, published next, becomes v2 and the default; v1 answers as before.
    earlier = sorted(p for p in outcome.checkpoint_dir.parent.glob("checkpoint_*")
                     if p.is_dir() and p != outcome.checkpoint_dir)
    v2 = served.publish(earlier[-1] / "adapter", name="server")
    assert v2.id == "server@v2"
    assert _close(_logprobs(served, "server@v1"), trained)
    assert not _close(_logprobs(served, "server"), trained)
    assert _close(_logprobs(served, None), base)
    assert [v.id for v in served.versions()["server"]] == ["server@v1", "server@v2"]
    out = served.generate(PROBE[:1], adapter="server")
    assert out[0].adapter == "server@v2"


def test_a_job_continues_from_a_published_version(tmp_path: Path, tiny_model_dir: Path, served: Any) -> None:
    """init_adapter: the job starts from a published version's weights (FedMKT's LLM over rounds). At an
    lr of 1e-9 the continued adapter answers as the version it started from, where a fresh one answers as the
    base model (LoRA's B starts at zero)."""
    job = dict(model=str(tiny_model_dir), workers=2, steps=2, micro_batch_size=4, max_length=32,
               checkpoint_every=2, lora={"r": 4, "alpha": 8, "dropout": 0.0}, resource_wait_s=60)
    base = _logprobs(served, None)
    _, start = train_and_publish(sst2_records(16), {**job, "lr": 5e-2}, served, adapter_name="cont",
                                 name="cont-start", storage_path=tmp_path / "train")
    started = _logprobs(served, start.id)
    assert not _close(started, base)
    _, cont = train_and_publish(sst2_records(16), {**job, "lr": 1e-9, "init_adapter": start.path}, served,
                                adapter_name="cont", name="cont-next", storage_path=tmp_path / "train")
    assert cont.id == "cont@v2" and _close(_logprobs(served, cont.id), started)
    _, fresh = train_and_publish(sst2_records(16), {**job, "lr": 1e-9}, served, adapter_name="cont",
                                 name="cont-fresh", storage_path=tmp_path / "train")
    assert _close(_logprobs(served, fresh.id), base)


def test_training_a_model_the_deployment_does_not_serve_fails_first(tmp_path: Path, served: Any) -> None:
    other = build_tiny_model(tmp_path / "other", ["another tiny model"], vocab_size=20)
    with pytest.raises(ConfigError, match="is not the model the server LLM deployment serves"):
        train_and_publish(sst2_records(4), {"model": str(other), "workers": 2}, served,
                          storage_path=tmp_path / "train")
