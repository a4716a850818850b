"""Models before any worker starts: too large for the node's memory (refused, one line), a tokenizer without a pad
token (EOS pads) or without pad and EOS (refused), a server LLM without a chat template (plain prompts)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml

from estuary.cli import main
from estuary.errors import ConfigError
from estuary.lm.encoding import padding_id
from estuary.platform.loading import load_config
from estuary.platform.model_fit import (
    GIB,
    ModelUse,
    check_memory,
    check_tokenizers,
    count_parameters,
    memory_refusal,
    model_uses,
)
from estuary.serve.engine import Engine, plain_text
from tests.conftest import build_tiny_model, tiny_job

SENTENCES = ["the movie was good", "the food was bad", "a great film"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny"), SENTENCES)


def _retokenize(src: Path, dest: Path, **specials: str) -> Path:
    """A copy of the tiny model whose tokenizer has only `specials` (no pad/EOS unless given)."""
    import shutil

    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    shutil.copytree(src, dest)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (dest / name).unlink(missing_ok=True)
    backend = AutoTokenizer.from_pretrained(src).backend_tokenizer
    PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", **specials).save_pretrained(dest)
    return dest


# ------------------------------------------------------------------------------ memory


def test_the_repositorys_models_fit_a_24_gib_node_and_a_7b_does_not() -> None:
    node = 24 * GIB
    assert memory_refusal(ModelUse("models.client", "smollm2-135m", "float32"), 134_515_008, node) is None
    assert memory_refusal(ModelUse("models.server", "qwen2.5-0.5b", "float32"), 494_032_768, node) is None
    assert memory_refusal(ModelUse("models.server", "qwen2.5-coder-1.5b", "float32"), 1_777_088_000, node) is None
    why = memory_refusal(ModelUse("models.server", "org/seven-b", "float32"), 7_000_000_000, node)
    assert why is not None and "\n" not in why
    assert why.startswith("models.server: org/seven-b has 7.00 G parameters, 26.1 GiB of float32 weights")
    assert "24.0 GiB" in why and "smaller model" in why and "bfloat16" in why
    assert memory_refusal(ModelUse("models.server", "org/seven-b", "bfloat16"), 7_000_000_000, node) is None


def test_parameters_are_counted_from_safetensors_and_from_config(model_dir: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    real = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(model_dir).parameters())
    assert count_parameters(str(model_dir)) == real
    config_only = tmp_path / "config-only"
    config_only.mkdir()
    (config_only / "config.json").write_text((model_dir / "config.json").read_text())
    assert count_parameters(str(config_only)) == real
    assert count_parameters(str(tmp_path / "missing")) is None


def test_a_model_too_large_for_the_node_is_refused_in_validate(model_dir: Path, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str],
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = load_config(base=tiny_job(tmp_path, model_dir))
    params = count_parameters(str(model_dir)) or 0
    with pytest.raises(ConfigError, match=r"^models\.client: .* more than this node's .*use a smaller model"):
        check_memory(cfg, total=params * 4)  # the fp32 weights fit, not with the LoRA training margin
    assert "model memory for" in check_memory(cfg, total=params * 5)[0]
    assert "not checked" in check_memory(cfg, total=1, cluster=True)[0]

    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(tiny_job(tmp_path, model_dir)))
    monkeypatch.setattr("estuary.platform.model_fit.node_memory_bytes", lambda: params * 4)
    assert main(["validate", str(job)]) == 2
    err = capsys.readouterr().err
    assert "models.client" in err and "more than this node" in err and "Traceback" not in err


def test_server_model_is_sized_at_its_widest_use(model_dir: Path, tmp_path: Path) -> None:
    base: dict[str, Any] = tiny_job(tmp_path, model_dir, models={"dtype": "bfloat16", "server": str(model_dir)},
                                    server={"dtype": "bfloat16"})
    assert [(u.field, u.dtype, u.server) for u in model_uses(load_config(base=base))] == \
        [("models.client", "bfloat16", False)]  # standalone, no server evaluation: no server LLM
    served = load_config(base={**base, "evaluation": {"server": True}})
    assert [(u.dtype, u.server) for u in model_uses(served)] == [("bfloat16", True)]
    trained = load_config(base={**base, "method": "crosslm", "baselines": []})
    assert [(u.dtype, u.server) for u in model_uses(trained)] == [("float32", True)]  # llm_train's default


# ------------------------------------------------------------------------------ tokenizers


def test_a_tokenizer_without_pad_pads_with_eos(model_dir: Path, tmp_path: Path) -> None:
    folder = _retokenize(model_dir, tmp_path / "no-pad", eos_token="</s>")
    cfg = load_config(base=tiny_job(tmp_path, folder))
    lines = check_tokenizers(cfg)
    assert lines == [f"tokenizer of {folder}: no pad token; its EOS '</s>' pads (masked out)"]
    from transformers import AutoTokenizer

    assert padding_id(AutoTokenizer.from_pretrained(folder)) == 2


def test_a_tokenizer_without_pad_or_eos_is_refused(model_dir: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    folder = _retokenize(model_dir, tmp_path / "bare")
    cfg = load_config(base=tiny_job(tmp_path, folder))
    with pytest.raises(ConfigError, match=r"^models\.client: the tokenizer of .* neither a pad token nor an EOS"):
        check_tokenizers(cfg)
    from transformers import AutoTokenizer

    with pytest.raises(ValueError, match="neither a pad token nor an EOS token"):
        padding_id(AutoTokenizer.from_pretrained(folder))
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(tiny_job(tmp_path, folder)))
    assert main(["validate", str(job)]) == 2
    err = capsys.readouterr().err
    assert "models.client" in err and "pad_token" in err and "Traceback" not in err


def test_a_server_without_chat_template_gets_plain_prompts(model_dir: Path, tmp_path: Path) -> None:
    cfg = load_config(base=tiny_job(tmp_path, model_dir, models={"server": str(model_dir)},
                                    evaluation={"server": True}))
    assert check_tokenizers(cfg) == [f"server LLM {model_dir}: no chat template; its prompts are sent as plain "
                                     "text (the messages a blank line apart)"]
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    messages = [{"role": "system", "content": "the movie"}, {"role": "user", "content": "was good"}]
    ids = Engine.encode(SimpleNamespace(tokenizer=tok), messages)  # type: ignore[arg-type]
    assert ids == tok(plain_text(messages), add_special_tokens=True)["input_ids"]
    assert plain_text(messages) == "the movie\n\nwas good\n\n"
