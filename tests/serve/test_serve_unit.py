"""Server pieces without a model or Ray: config, parameters, the top-k payload, the adapter registry, the
CLI's config loading, startup-failure messages and the grouped CPU LoRA kernels."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from pydantic import ValidationError

from estuary.errors import ConfigError
from estuary.serve.adapters import AdapterRegistry, check_adapter_files, read_adapter_files
from estuary.serve.config import ServerConfig
from estuary.serve.types import (
    SCHEMA_VERSION,
    GenerationParams,
    InvalidRequest,
    PositionTopK,
    TextTopK,
    TopKLogprobs,
    UnknownAdapter,
)


# ------------------------------------------------------------------------------------------- config
def test_config_defaults_and_descriptions() -> None:
    cfg = ServerConfig()
    assert (cfg.host, cfg.port, cfg.engine, cfg.model) == ("127.0.0.1", 8000, "vllm", "qwen2.5-0.5b")
    assert all(f.description for f in ServerConfig.model_fields.values())
    with pytest.raises(ValidationError, match="extra"):
        ServerConfig(modle="x")  # type: ignore[call-arg]


def test_config_gpu_fraction_matches_memory() -> None:
    half = ServerConfig(resources={"num_gpus": 0.5})
    assert half.memory_utilization() == 0.45 and half.tensor_parallel_size() == 1 and not half.engine_in_process()
    assert ServerConfig(resources={"num_gpus": 2}).tensor_parallel_size() == 2
    assert ServerConfig(resources={"num_gpus": 1}, gpu_memory_utilization=0.7).memory_utilization() == 0.7
    with pytest.raises(ValidationError, match="exceeds the GPU fraction"):
        ServerConfig(resources={"num_gpus": 0.25}, gpu_memory_utilization=0.5)
    with pytest.raises(ValidationError, match="needs resources.num_gpus"):
        ServerConfig(gpu_memory_utilization=0.5)
    with pytest.raises(ValidationError, match="whole number"):
        ServerConfig(resources={"num_gpus": 1.5})
    with pytest.raises(ValidationError, match="max_lora_rank"):
        ServerConfig(max_lora_rank=12)
    opts = ServerConfig(resources={"num_gpus": 0.5, "custom": {"llm": 1}}).actor_options()
    assert opts["num_cpus"] == 0 and opts["num_gpus"] == 0.5 and opts["resources"] == {"llm": 1}
    assert "resources" not in ServerConfig().actor_options()


def test_config_cpu_environment() -> None:
    env = ServerConfig(cpu_threads=2, kv_cache_gib=1.5).replica_env()
    assert env["VLLM_CPU_OMP_THREADS_BIND"] == "nobind" and env["OMP_NUM_THREADS"] == "2"
    assert env["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0"
    assert "VLLM_CPU_OMP_THREADS_BIND" not in ServerConfig(resources={"num_gpus": 1}).replica_env()


def test_public_api_is_lazy() -> None:
    import estuary.serve as serve_pkg

    assert sorted(serve_pkg._EXPORTS) == sorted(serve_pkg.__all__)
    assert all(getattr(serve_pkg, name) is not None for name in serve_pkg.__all__)
    with pytest.raises(AttributeError):
        serve_pkg.nothing_here  # noqa: B018


# --------------------------------------------------------------------------------------- parameters
@pytest.mark.parametrize("bad", [
    {"temperature": -0.1}, {"top_p": 0.0}, {"top_p": 1.5}, {"n": 0}, {"max_tokens": 0}, {"stop": ("",)},
    {"temperature": math.nan}, {"seed": "x"},
])
def test_generation_params_rejects(bad: dict) -> None:
    with pytest.raises(InvalidRequest):
        GenerationParams(**bad)


def test_generation_params_stop_string() -> None:
    assert GenerationParams(stop="\n").stop == ("\n",)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------- payload
def _payload(**changes: object) -> TopKLogprobs:
    pos = PositionTopK(ids=[5, 7], tokens=["a", "b"], logprobs=[-0.1, -2.5])
    text = TextTopK(text="x y", token_ids=[1, 2], tokens=["x", "y"], token_logprobs=[None, -1.0], topk=[pos, pos])
    data = dict(model="m", adapter=None, k=2, engine="vllm", dtype="float32", texts=[text])
    data.update(changes)
    return TopKLogprobs(**data)  # type: ignore[arg-type]


def test_topk_payload_round_trip() -> None:
    p = _payload().validate()
    again = TopKLogprobs.from_dict(json.loads(json.dumps(p.to_dict())))
    assert again == p and again.schema_version == SCHEMA_VERSION


def test_topk_payload_json_schema() -> None:
    schema = TopKLogprobs.json_schema()
    assert schema["properties"]["schema_version"] == {"const": SCHEMA_VERSION, "title": "Schema Version"}
    assert {"texts", "k", "schema_version"} <= set(schema["required"])
    assert set(schema["properties"]) == set(_payload().to_dict())


@pytest.mark.parametrize("mutate,match", [
    (lambda d: d.update(k=0), "k must be"),
    (lambda d: d.update(schema_version=99), "schema_version"),
    (lambda d: d["texts"][0]["topk"][0]["logprobs"].__setitem__(0, float("nan")), "finite"),
    (lambda d: d["texts"][0]["topk"][1]["ids"].pop(), "expected 2"),
    (lambda d: d["texts"][0]["tokens"].pop(), "lengths differ"),
    (lambda d: d["texts"][0]["topk"][0].update(logprobs=[-3.0, -1.0]), "sorted"),
    (lambda d: d["texts"][0].update(token_logprobs=[-1.0, -1.0]), "token logprob"),
    (lambda d: d["texts"][0]["topk"][0].update(ids=[5, 5]), "repeated"),
    (lambda d: d.pop("texts"), "malformed"),
])
def test_topk_payload_rejects(mutate: object, match: str) -> None:
    data = _payload().to_dict()
    mutate(data)  # type: ignore[operator]
    with pytest.raises(ValueError, match=match):
        TopKLogprobs.from_dict(data)


# -------------------------------------------------------------------------------------------- adapters
def _adapter_dir(path: Path, r: int = 8) -> Path:
    path.mkdir(parents=True)
    (path / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": r, "lora_alpha": 16}))
    (path / "adapter_model.safetensors").write_bytes(b"weights")
    return path


def test_registry_versions(tmp_path: Path) -> None:
    reg = AdapterRegistry(tmp_path / "root", max_rank=16)
    files = read_adapter_files(_adapter_dir(tmp_path / "a"))
    v1, v2 = reg.publish("sst2", files), reg.publish("sst2", files)
    assert (v1.id, v2.id) == ("sst2@v1", "sst2@v2") and Path(v2.path, "adapter_config.json").is_file()
    assert reg.resolve("sst2") == v2 and reg.resolve("sst2@v1") == v1 and reg.resolve("sst2@1") == v1
    assert [v.id for v in reg.versions()["sst2"]] == ["sst2@v1", "sst2@v2"]
    with pytest.raises(UnknownAdapter, match="sst2@v1, sst2@v2"):
        reg.resolve("sst2@v3")
    with pytest.raises(UnknownAdapter, match="published: sst2"):
        reg.resolve("other")
    with pytest.raises(InvalidRequest, match="adapter name"):
        reg.publish("bad@name", files)
    assert AdapterRegistry(tmp_path / "root", max_rank=16).resolve("sst2") == v2, "another replica sees it"


def test_adapter_file_checks(tmp_path: Path) -> None:
    with pytest.raises(InvalidRequest, match="rank 64"):
        check_adapter_files(read_adapter_files(_adapter_dir(tmp_path / "big", r=64)), max_rank=16)
    with pytest.raises(InvalidRequest, match="not a LoRA adapter folder"):
        read_adapter_files(tmp_path)


# ----------------------------------------------------------------------------------------------- CLI
def test_cli_config_sources(tmp_path: Path) -> None:
    from estuary.cli.serve import add_serve_parser, load_server_config

    job = tmp_path / "serve.yaml"
    job.write_text("server:\n  model: smollm2-135m\n  kv_cache_gib: 3\n")
    cfg = load_server_config(str(job), {"port": 9001, "host": None}, ["server.max_loras=4"])
    assert (cfg.model, cfg.kv_cache_gib, cfg.port, cfg.max_loras, cfg.host) == ("smollm2-135m", 3, 9001, 4,
                                                                                  "127.0.0.1")
    with pytest.raises(ConfigError, match="server.max_lorass.*did you mean 'max_loras'"):
        load_server_config(None, {}, ["max_lorass=2"])
    with pytest.raises(ConfigError, match="not found"):
        load_server_config(str(tmp_path / "missing.yaml"), {}, [])
    with pytest.raises(ConfigError, match="server.port"):
        load_server_config(None, {"port": 0}, [])
    run_job = tmp_path / "run.yaml"  # a whole experiment's job: the server model comes from models.server
    run_job.write_text("models:\n  server: gemma3-270m\nserver:\n  port: 8100\n")
    cfg = load_server_config(str(run_job), {}, ["models.server=smollm2-135m"])
    assert (cfg.model, cfg.port) == ("smollm2-135m", 8100)
    assert load_server_config(str(run_job), {"model": "qwen2.5-0.5b"}, []).model == "qwen2.5-0.5b"
    gpu_job = tmp_path / "gpu.yaml"  # --num-gpus sets server.resources.num_gpus and keeps the rest of resources
    gpu_job.write_text("server:\n  resources: {num_cpus: 1, num_gpus: 1, custom: {estuary_server: 1}}\n")
    cfg = load_server_config(str(gpu_job), {"num_gpus": 0.5}, [])
    assert (cfg.resources.num_cpus, cfg.resources.num_gpus, cfg.resources.custom) == (1, 0.5, {"estuary_server": 1})
    with pytest.raises(ConfigError, match="server.resources: num_gpus=1.5: use a fraction below 1 or a whole number"):
        load_server_config(None, {"num_gpus": 1.5}, [])
    import argparse

    parser = argparse.ArgumentParser()
    add_serve_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["serve", "--model", "qwen2.5-0.5b"])
    assert args.model == "qwen2.5-0.5b" and args.host is None and callable(args.fn)


def test_cli_missing_model_fails_fast(capsys: pytest.CaptureFixture[str]) -> None:
    """`estuary serve` with a model that does not resolve: exit 2 and one line, before any Ray start."""
    from estuary.cli import main

    assert main(["serve", "--model", "no-such-model-alias"]) == 2
    err = capsys.readouterr().err.strip()
    assert "unknown model 'no-such-model-alias'" in err and len(err.splitlines()) == 1


def test_startup_failure_reason_is_one_line() -> None:
    from estuary.serve.launcher import _reason

    trace = ("The deployment failed to start 1 times in a row.\nTraceback (most recent call last):\n  File x\n"
             "estuary.serve.types.ServerStartupError: vLLM could not start 'm': ValueError: Available memory on "
             "node 0 (1.0 GiB) is less than requested memory for kv (64.0 GiB).\n")
    assert _reason(trace) == ("vLLM could not start 'm': ValueError: Available memory on node 0 (1.0 GiB) is less "
                              "than requested memory for kv (64.0 GiB).")


# ------------------------------------------------------------------------------------ CPU LoRA kernels
def test_grouped_lora_ops_match_vllm() -> None:
    torch = pytest.importorskip("torch")
    lora_ops = pytest.importorskip("vllm.lora.ops.torch_ops.lora_ops")
    from estuary.serve import _cpu_lora as grouped

    gen = torch.Generator().manual_seed(0)
    for idx in ([0, 0, 0, 0, 0], [1, 0, 1, 0, 1], [-1, -1, -1, -1, -1], [-1, 0, -1, 1, 0]):
        ind = torch.tensor(idx)
        x = torch.randn(5, 16, generator=gen)
        a = torch.randn(3, 1, 4, 16, generator=gen)
        b = torch.randn(3, 1, 24, 4, generator=gen)
        a[-1] = 0  # vLLM's kernels read slot -1 for "no adapter"; equal results need it empty
        b[-1] = 0
        y1, y2 = torch.zeros(5, 4), torch.zeros(5, 4)
        lora_ops.bgmv_shrink(x, a, y1, ind, 0.5)
        grouped.bgmv_shrink(x, a, y2, ind, 0.5)
        o1 = torch.randn(5, 40, generator=gen)
        o2 = o1.clone()
        lora_ops.bgmv_expand_slice(y1, b, o1, ind, 8, 24, True)
        grouped.bgmv_expand_slice(y1, b, o2, ind, 8, 24, True)
        e1 = torch.randn(5, 24, generator=gen)
        e2 = e1.clone()
        lora_ops.bgmv_expand(y1, b, e1, ind, False)
        grouped.bgmv_expand(y1, b, e2, ind, False)
        assert torch.allclose(y1, y2, atol=1e-5) and torch.allclose(o1, o2, atol=1e-5)
        assert torch.allclose(e1, e2, atol=1e-5)
    # With every slot in use, a no-adapter token must stay untouched (vLLM's kernels would add slot -1).
    full_b = torch.randn(2, 1, 24, 4, generator=gen)
    out = torch.zeros(1, 24)
    grouped.bgmv_expand(torch.ones(1, 4), full_b, out, torch.tensor([-1]), True)
    assert out.abs().sum() == 0


def test_unschedulable_replica_message() -> None:
    from estuary.serve.launcher import _unschedulable

    serve_message = ("Deployment 'LLMServer' in application 'estuary-llm' has 1 replicas that have taken more than "
                     "30s to be scheduled. This may be due to waiting for the cluster to auto-scale or for a runtime "
                     "environment to be installed. Resources required for each replica: {'CPU': 2.0}, total "
                     "resources available: {'CPU': 1.0}. Use `ray status` for more details.")
    assert _unschedulable(serve_message) == (
        "the Ray cluster has no room for the replica: it needs {'CPU': 2.0}, available {'CPU': 1.0}; lower "
        "server.resources (num_cpus, num_gpus, custom) or free them")
    assert _unschedulable("Deploying new version.") is None


def test_port_in_use_is_one_line() -> None:
    import socket

    from estuary.serve.launcher import check_port_free
    from estuary.serve.types import ServerStartupError

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(ServerStartupError, match=f"cannot listen on 127.0.0.1:{port}.*--port"):
            check_port_free("127.0.0.1", port)
    check_port_free("127.0.0.1", port)  # free again


def test_seed_per_prompt_and_per_chunk() -> None:
    from estuary.serve.client import _from

    p = GenerationParams(seed=10, n=2)
    assert p.for_prompt(0) is p and p.for_prompt(3).seed == 16 and p.for_prompt(3).n == 2
    assert GenerationParams().for_prompt(5).seed is None
    assert _from(p, 1024).seed == 2058 and _from({"seed": 1}, 8) == {"seed": 9} and _from(None, 8) is None
    assert _from({"seed": 1, "n": 4}, 8) == {"seed": 33, "n": 4}
    # vLLM draws sample j of a request with its seed + j: no two samples of a call share a seed
    q = GenerationParams(seed=7, n=4)
    seeds = [q.for_prompt(i).seed + j for i in range(24) for j in range(q.n)]  # type: ignore[operator]
    assert len(set(seeds)) == 96


def test_a_dead_deployment_is_one_line_that_names_resume() -> None:
    """A replica killed mid-run (the first FedMKT RTE run: OOM during the LLM's training) surfaced as Ray's
    DeploymentUnavailableError traceback; the CLI now prints one EstuaryError line."""
    from ray.serve._private.common import DeploymentID
    from ray.serve.exceptions import DeploymentUnavailableError

    from estuary.errors import EstuaryError
    from estuary.serve.client import _unwrap
    from estuary.serve.types import InvalidRequest, ServerUnavailable

    err = _unwrap(DeploymentUnavailableError(DeploymentID(name="estuary-llm", app_name="estuary-llm")))
    assert isinstance(err, ServerUnavailable) and isinstance(err, EstuaryError)
    assert "\n" not in str(err) and "estuary resume" in str(err) and "estuary-llm" in str(err)
    wrapped = RuntimeError("wrapper")
    wrapped.cause = InvalidRequest("bad")  # type: ignore[attr-defined]
    assert isinstance(_unwrap(wrapped), InvalidRequest)  # the replica's own errors still come through
    other = RuntimeError("x")
    assert _unwrap(other) is other
