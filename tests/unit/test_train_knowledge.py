"""Knowledge records and batches for server training: validation, duplicate merging, collation (no Ray)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch

from estuary.errors import DataError
from estuary.lm.objective import IGNORE, objective
from estuary.train.knowledge import collate, merge_duplicates, normalize_record


def _distill(n: int = 3) -> dict[str, Any]:
    return {"input_ids": list(range(5, 5 + n)), "topk_ids": [[6, 7]] * n,
            "topk_logprobs": [[math.log(0.6), math.log(0.2)]] * n}


@pytest.mark.parametrize(("record", "expected"), [
    ({"prompt": "a", "completion": "b", "score": 1}, "unknown field(s) ['score']"),
    ({"topk_ids": [[1]], "topk_logprobs": [[0.0]]}, "needs input_ids"),
    ({**_distill(), "topk_ids": [[6, 7]] * 2}, "one entry per input token (3)"),
    ({**_distill(), "topk_logprobs": [[-0.1]] * 3}, "2 top-k ids but 1 log-probabilities"),
    ({**_distill(), "topk_logprobs": [[0.5, -1.0]] * 3}, "above 0"),
    ({**_distill(), "topk_logprobs": [[math.log(0.8), math.log(0.7)]] * 3}, "sum to 1.5000 > 1"),
    ({"input_ids": []}, "non-empty list"),
    ({"prompt": "only a prompt"}, "non-empty string completion"),
    ({"text": ""}, "empty record"),
    ({}, "empty record"),
    ("just text", "is a mapping"),
    ({"text": "x", "input_ids": [1]}, "not both"),
    ({"input_ids": [1, 2], "sft_from": 2}, "sft_from must be a token index of input_ids (0 to 1)"),
    ({"input_ids": [1, 2], "sft_from": True}, "sft_from must be a token index"),
])
def test_bad_records_are_one_line(record: Any, expected: str) -> None:
    with pytest.raises(DataError) as info:
        normalize_record(record, "record 7")
    assert expected in str(info.value) and str(info.value).startswith("record 7:") and "\n" not in str(info.value)


def test_good_records_are_normalised() -> None:
    rec = normalize_record({"prompt": "p", "completion": "c"})
    assert rec["prompt"] == "p" and rec["topk_ids"] is None and set(rec) >= {"text", "input_ids", "sft"}
    rec = normalize_record(_distill())
    assert rec["topk_ids"] == [[6, 7]] * 3 and isinstance(rec["topk_logprobs"][0][0], float)


def test_duplicate_tokens_after_vocabulary_mapping_add_up() -> None:
    ids, lps = merge_duplicates([5, 7, 5], [math.log(0.2), math.log(0.1), math.log(0.3)])
    assert ids == [5, 7]
    assert [math.exp(x) for x in lps] == pytest.approx([0.5, 0.1])
    assert merge_duplicates([3, 3], [float("-inf"), math.log(0.4)])[1] == pytest.approx([math.log(0.4)])


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


def test_collate_sft_masks_the_prompt(tokenizer: Any) -> None:
    rows = [{"prompt": "review : a fine film sentiment :", "completion": "positive"}, {"text": "a dull film"}]
    batch = collate(rows, tokenizer, max_length=64, vocab_size=len(tokenizer))
    prompt_len = len(tokenizer("review : a fine film sentiment :")["input_ids"])
    ids, labels, mask = batch["input_ids"], batch["labels"], batch["attention_mask"]
    assert (labels[0, :prompt_len] == IGNORE).all()
    assert labels[0, prompt_len].item() == tokenizer.convert_tokens_to_ids("positive")
    assert labels[0, prompt_len + 1].item() == tokenizer.eos_token_id
    assert mask[1].sum().item() == len(tokenizer("a dull film")["input_ids"]) + 1  # + EOS
    assert (labels[1, mask[1].sum():] == IGNORE).all() and (ids[1, mask[1].sum():] == tokenizer.pad_token_id).all()
    assert batch["tokens"] == int(mask.sum()) and batch["topk_ids"] is None


def test_collate_distillation_pads_topk_and_truncates(tokenizer: Any) -> None:
    short = {**_distill(2), "topk_ids": [[6], [9, 9, 8]], "topk_logprobs": [[-0.1], [-1.0, -2.0, -3.0]]}
    batch = collate([short, {**_distill(6), "sft": False}], tokenizer, max_length=4, vocab_size=len(tokenizer))
    assert batch["input_ids"].shape == (2, 4) and batch["topk_ids"].shape == (2, 4, 2)
    assert batch["topk_ids"][0, 1].tolist() == [9, 8]  # duplicates merged: 9 carries e^-1 + e^-2
    assert batch["topk_logprobs"][0, 1, 0].item() == pytest.approx(math.log(math.exp(-1) + math.exp(-2)), abs=1e-6)
    assert batch["topk_logprobs"][0, 0, 1].item() == float("-inf")  # padding
    assert torch.isinf(batch["topk_logprobs"][0, 2:]).all()  # past the short text: no target
    assert (batch["labels"][1] == IGNORE).all()  # sft: false
    parts = objective(torch.zeros(2, 4, len(tokenizer)), batch["labels"], batch["topk_ids"],
                      batch["topk_logprobs"], distill_weight=0.5)
    assert parts.kd_positions == 6 and parts.sft_tokens == 1


def test_sft_from_counts_only_the_completion(tokenizer: Any) -> None:
    batch = collate([{**_distill(4), "sft_from": 3}, _distill(4)], tokenizer, max_length=8, vocab_size=len(tokenizer))
    assert (batch["labels"][0, :3] == IGNORE).all() and batch["labels"][0, 3].item() == batch["input_ids"][0, 3]
    assert (batch["labels"][1] == batch["input_ids"][1]).all()
    parts = objective(torch.zeros(2, 4, len(tokenizer)), batch["labels"], batch["topk_ids"],
                      batch["topk_logprobs"], distill_weight=0.5)
    assert parts.sft_tokens == 1 + 3 and parts.kd_positions == 8  # the prompt still carries the KD term


def test_collate_rejects_ids_outside_the_vocabulary(tokenizer: Any) -> None:
    with pytest.raises(DataError, match="outside the server LLM's vocabulary"):
        collate([{"input_ids": [1, 99999]}], tokenizer, 16, len(tokenizer))
    with pytest.raises(DataError, match="map client distributions to the LLM vocabulary"):
        collate([{**_distill(2), "topk_ids": [[99999], [6]], "topk_logprobs": [[-1.0], [-1.0]]}], tokenizer, 16,
                len(tokenizer))
