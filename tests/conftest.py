"""Session fixtures shared by the suite: one local Ray cluster, one tiny model folder."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def free_port() -> int:
    return free_ports(1)[0]


def free_ports(n: int) -> list[int]:
    """`n` distinct free ports: every socket stays bound until all are picked, so the OS cannot hand the same
    port out twice (picking them one by one once gave a Ray head the same port for two components)."""
    import contextlib
    import socket

    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(n)]
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in socks]


@pytest.fixture(scope="session")
def ray_session() -> Iterator[None]:
    """One local Ray cluster for every Ray-level and e2e test (private temp dir, no dashboard)."""
    import ray

    tmp = tempfile.mkdtemp(prefix="estray-", dir="/tmp")  # short: Ray's socket paths have a length limit
    from estuary.runtime import worker_env

    env = {"PYTHONPATH": f"{REPO}:{REPO / 'src'}", **worker_env()}
    port = free_port()
    os.environ["ESTUARY_TEST_METRICS_PORT"] = str(port)
    ray.init(num_cpus=2, include_dashboard=False, _temp_dir=tmp, runtime_env={"env_vars": env},
             logging_level="WARNING", log_to_driver=False, _metrics_export_port=port,
             _system_config={"metrics_report_interval_ms": 1000})
    yield
    ray.shutdown()
    shutil.rmtree(tmp, ignore_errors=True)


def build_tiny_model(path: Path, sentences: list[str], vocab_size: int = 1500, hidden_size: int = 32) -> Path:
    """A tiny random Llama with a word-level tokenizer over `sentences`: real HF folder, fast on CPU."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    counts = Counter(w for s in sentences for w in s.lower().split())
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "<pad>": 3}
    for w in ["review", ":", "sentiment", "negative", "positive", "\n"]:
        vocab.setdefault(w, len(vocab))
    for w, _ in counts.most_common(vocab_size):
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.normalizer = None
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    hf_tok = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )
    cfg = LlamaConfig(
        vocab_size=len(vocab), hidden_size=hidden_size, intermediate_size=2 * hidden_size, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        bos_token_id=1, eos_token_id=2, pad_token_id=3, tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(path)
    hf_tok.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from estuary.data import find_data_root

    lines = (find_data_root() / "sst2" / "train.txt").read_text().splitlines()
    return build_tiny_model(tmp_path_factory.mktemp("tiny-llama"), [ln[2:] for ln in lines])


def tiny_job(tmp_path: Path, model_dir: Path, **overrides: Any) -> dict[str, Any]:
    """A job dict that runs in seconds on the tiny model (deep-merge `overrides` by section)."""
    job: dict[str, Any] = {
        "name": "tiny",
        "method": "standalone",
        "baselines": ["zero_shot", "centralized"],
        "rounds": 2,
        "seed": 0,
        "models": {"client": str(model_dir)},
        "data": {"task": "sst2", "train_size": 120, "test_size": 40, "client_eval_max": 10},
        "clients": {"count": 4, "mode": "pooled", "pool_size": 2},
        "training": {"steps": 3, "batch_size": 4, "max_length": 64, "lr": 1e-3},
        "evaluation": {"server": False, "batch_size": 16},
        "output": {"dir": str(tmp_path / "runs"), "run_id": "run", "plots": True},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(job.get(key), dict):
            job[key] = {**job[key], **value}
        else:
            job[key] = value
    return job


# The served-model fixtures (one vLLM deployment per session) are shared by the serve, train and e2e tests.
pytest_plugins = ["tests.serve.fixtures"]
