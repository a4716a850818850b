"""Unit tests of estuary.lm (model, encoding, scoring, training loop) on a tiny random Llama and tokenizer (CPU)."""

from __future__ import annotations

import math
from collections.abc import Iterator

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from estuary.data.task import Example, Task
from estuary.lm import scoring
from estuary.lm.encoding import encode
from estuary.lm.loop import train_steps
from estuary.lm.lora import LoraConfig
from estuary.lm.model import adapter_state, attach_lora, load_adapter_state, trainable_parameters
from estuary.lm.scoring import evaluate, label_scores, predict_label_probs

SENTENCES = [
    "a great and moving film with fine acting",
    "a dull boring mess of a movie",
    "the plot is thin but the cast is charming",
    "i loved every minute of this wonderful story",
    "an awful waste of time and money",
    "the director has made a bland and tired film",
    "funny warm and smart from start to end",
    "not worth seeing even for free",
]
LABELS = [1, 0, 1, 1, 0, 0, 1, 0]

SST2 = Task(
    name="toy",
    kind="classification",
    template="Review: {text}\nSentiment:",
    label_words=(" negative", " positive"),
    label_names=("negative", "positive"),
)
MULTI = Task(  # label words of two tokens each
    name="toy-multi",
    kind="classification",
    template="Review: {text}\nSentiment:",
    label_words=(" very negative", " very positive"),
    label_names=("negative", "positive"),
)
GEN = Task(name="toy-gen", kind="generation", template="Describe: {text}\nAnswer:")
LM = Task(name="toy-lm", kind="generation", template="{text}")


def make_tokenizer() -> PreTrainedTokenizerFast:
    words = sorted(
        {w for s in SENTENCES for w in s.split()}
        | {"Review", "Sentiment", "Describe", "Answer", ":", "negative", "positive", "very"}
    )
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "<pad>": 3}
    for w in words:
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """Tiny models gain nothing from intra-op threads, and spinning OpenMP threads make a busy
    (oversubscribed) machine several times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    return make_tokenizer()


def make_model(vocab_size: int, seed: int = 0) -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=3,
        tie_word_embeddings=False,
        initializer_range=0.3,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.eval()
    return model


@pytest.fixture()
def peft_model(tokenizer: PreTrainedTokenizerFast):  # type: ignore[no-untyped-def]
    return attach_lora(make_model(len(tokenizer)), LoraConfig(r=4, alpha=8, dropout=0.1), seed=1)


def examples() -> list[Example]:
    pairs = enumerate(zip(SENTENCES, LABELS, strict=True))
    return [Example(text=s, label=y, uid=f"toy/train/{i}") for i, (s, y) in pairs]


def test_encode_classification_masks_prompt(tokenizer: PreTrainedTokenizerFast) -> None:
    ((ids, start),) = encode(tokenizer, SST2, examples()[:1], max_length=64)
    prompt = tokenizer("Review: a great and moving film with fine acting\nSentiment:")["input_ids"]
    assert ids[:start] == prompt and ids[0] == tokenizer.bos_token_id
    assert ids[start:] == tokenizer(" positive", add_special_tokens=False)["input_ids"]
    ((ids2, start2),) = encode(tokenizer, MULTI, examples()[1:2], max_length=64)
    assert len(ids2) - start2 == 2


def test_encode_truncation_keeps_bos_and_suffix(tokenizer: PreTrainedTokenizerFast) -> None:
    long = Example(text=" ".join(SENTENCES * 5), label=0)
    ((ids, start),) = encode(tokenizer, SST2, [long], max_length=20)
    assert len(ids) == 20
    assert ids[0] == tokenizer.bos_token_id
    suffix = tokenizer("\nSentiment:", add_special_tokens=False)["input_ids"]
    assert ids[start - len(suffix) : start] == suffix
    head = tokenizer("Review: a great", add_special_tokens=False)["input_ids"]
    assert ids[1 : 1 + len(head)] == head  # the start of the prompt survives too
    assert ids[start:] == tokenizer(" negative", add_special_tokens=False)["input_ids"]


def test_encode_generation(tokenizer: PreTrainedTokenizerFast) -> None:
    ex = Example(text="a dull movie", target=" boring mess")
    ((ids, start),) = encode(tokenizer, GEN, [ex], max_length=64)
    assert ids[start:] == tokenizer(" boring mess", add_special_tokens=False)["input_ids"]
    ((ids, start),) = encode(tokenizer, LM, [Example(text="a dull movie")], max_length=64)
    assert start == 1 and ids == tokenizer("a dull movie")["input_ids"]  # whole text after BOS
    ((ids, start),) = encode(tokenizer, LM, [Example(text=" ".join(SENTENCES))], max_length=10)
    assert len(ids) == 10 and start == 1


def test_attach_lora_deterministic_and_only_adapter_trainable(tokenizer: PreTrainedTokenizerFast) -> None:
    a = attach_lora(make_model(len(tokenizer)), LoraConfig(), seed=5)
    b = attach_lora(make_model(len(tokenizer)), LoraConfig(), seed=5)
    c = attach_lora(make_model(len(tokenizer)), LoraConfig(), seed=6)
    names = [n for n, _ in trainable_parameters(a)]
    assert names and all("lora_" in n for n in names)
    sa, sb, sc = adapter_state(a), adapter_state(b), adapter_state(c)
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert any(not torch.equal(sa[k], sc[k]) for k in sa)
    state = torch.random.get_rng_state()
    attach_lora(make_model(len(tokenizer)), LoraConfig(), seed=7)
    assert torch.equal(state, torch.random.get_rng_state())  # caller's RNG untouched


def _logits(model: torch.nn.Module, tokenizer: PreTrainedTokenizerFast) -> torch.Tensor:
    ids = tokenizer(SENTENCES[0], return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        return model(input_ids=ids).logits.clone()


def test_adapter_swap_is_exact(tokenizer: PreTrainedTokenizerFast, peft_model) -> None:  # type: ignore[no-untyped-def]
    kw = dict(steps=3, batch_size=4, lr=1e-2, max_length=32)
    train_steps(peft_model, tokenizer, SST2, examples(), seed=0, **kw)
    state_a = adapter_state(peft_model)
    out_a = _logits(peft_model, tokenizer)
    train_steps(peft_model, tokenizer, SST2, examples()[::-1], seed=1, **kw)
    state_b = adapter_state(peft_model)
    out_b = _logits(peft_model, tokenizer)
    assert not torch.equal(out_a, out_b)
    load_adapter_state(peft_model, state_a)
    assert torch.equal(_logits(peft_model, tokenizer), out_a)
    load_adapter_state(peft_model, state_b)
    assert torch.equal(_logits(peft_model, tokenizer), out_b)
    load_adapter_state(peft_model, state_a)
    assert torch.equal(_logits(peft_model, tokenizer), out_a)
    assert all(v.device.type == "cpu" for v in state_a.values())
    with pytest.raises(ValueError, match="missing"):
        load_adapter_state(peft_model, dict(list(state_a.items())[1:]))


def test_optimizer_state_handoff_equals_one_run(tokenizer: PreTrainedTokenizerFast) -> None:
    kw = dict(batch_size=3, lr=5e-3, max_length=32, seed=11)
    one = attach_lora(make_model(len(tokenizer)), LoraConfig(dropout=0.1), seed=2)
    full = train_steps(one, tokenizer, SST2, examples(), steps=4, **kw)
    two = attach_lora(make_model(len(tokenizer)), LoraConfig(dropout=0.1), seed=2)
    first = train_steps(two, tokenizer, SST2, examples(), steps=2, **kw)
    # hand-off: a second worker (fresh model, same base and adapter init) continues from the states
    three = attach_lora(make_model(len(tokenizer)), LoraConfig(dropout=0.1), seed=3)
    load_adapter_state(three, adapter_state(two))
    second = train_steps(three, tokenizer, SST2, examples(), steps=2, optimizer_state=first.optimizer_state, **kw)
    assert first.losses + second.losses == full.losses
    s_full, s_three = adapter_state(one), adapter_state(three)
    assert all(torch.equal(s_full[k], s_three[k]) for k in s_full)
    assert full.examples_seen == 12 and full.tokens > 12 and full.seconds > 0


def test_training_is_deterministic(tokenizer: PreTrainedTokenizerFast) -> None:
    runs = []
    for _ in range(2):
        model = attach_lora(make_model(len(tokenizer)), LoraConfig(dropout=0.2), seed=4)
        runs.append(
            train_steps(
                model, tokenizer, SST2, examples(), steps=3, batch_size=4, lr=1e-2, max_length=32, seed=9
            ).losses
        )
    assert runs[0] == runs[1]
    model = attach_lora(make_model(len(tokenizer)), LoraConfig(dropout=0.2), seed=4)
    other = train_steps(
        model, tokenizer, SST2, examples(), steps=3, batch_size=4, lr=1e-2, max_length=32, seed=10
    ).losses
    assert other != runs[0]


def test_loss_decreases_when_overfitting(tokenizer: PreTrainedTokenizerFast) -> None:
    model = attach_lora(make_model(len(tokenizer)), LoraConfig(r=8, alpha=16, dropout=0.0), seed=0)
    data = examples()[:4]
    before = evaluate(model, tokenizer, SST2, data)
    result = train_steps(model, tokenizer, SST2, data, steps=30, batch_size=4, lr=3e-2, max_length=32, seed=0)
    after = evaluate(model, tokenizer, SST2, data)
    assert result.losses[-1] < 0.5 * result.losses[0]
    assert after["loss"] < before["loss"] and after["accuracy"] == 1.0
    assert not model.training  # mode restored


def test_generation_training_and_perplexity(tokenizer: PreTrainedTokenizerFast) -> None:
    model = attach_lora(make_model(len(tokenizer)), LoraConfig(dropout=0.0), seed=0)
    data = [Example(text=s) for s in SENTENCES[:4]]
    before = evaluate(model, tokenizer, LM, data)
    train_steps(model, tokenizer, LM, data, steps=20, batch_size=4, lr=3e-2, max_length=32, seed=0)
    after = evaluate(model, tokenizer, LM, data)
    assert after["loss"] < before["loss"]
    assert math.isclose(after["perplexity"], math.exp(after["loss"]), rel_tol=1e-9)
    assert before["perplexity"] > 1 and after["n"] == 4


def test_evaluate_ranges_and_hand_computed_score(tokenizer: PreTrainedTokenizerFast, peft_model) -> None:  # type: ignore[no-untyped-def]
    data = examples()
    metrics = evaluate(peft_model, tokenizer, SST2, data, batch_size=3)
    assert 0.0 <= metrics["accuracy"] <= 1.0 and 0.0 <= metrics["macro_f1"] <= 1.0
    assert metrics["loss"] > 0 and metrics["n"] == len(data)
    probs = predict_label_probs(peft_model, tokenizer, SST2, data, batch_size=3)
    assert probs.shape == (len(data), 2) and torch.allclose(probs.sum(-1), torch.ones(len(data)))

    # by hand, one example alone, no padding: log-softmax of the next-token logits after the prompt
    ex = data[2]
    ids = tokenizer(SST2.prompt(ex), return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        logp = torch.log_softmax(peft_model(input_ids=ids).logits[0, -1].double(), dim=-1)
    words = [tokenizer(w, add_special_tokens=False)["input_ids"][0] for w in SST2.label_words]
    expected = torch.softmax(logp[words], dim=-1).float()
    assert torch.allclose(probs[2], expected, atol=1e-5)

    acc = sum(int(p.argmax()) == e.label for p, e in zip(probs, data, strict=True)) / len(data)
    assert metrics["accuracy"] == pytest.approx(acc)
    nll = -sum(math.log(float(p[e.label])) for p, e in zip(probs, data, strict=True)) / len(data)
    assert metrics["loss"] == pytest.approx(nll, rel=1e-4)


def test_general_path_equals_fast_path(tokenizer: PreTrainedTokenizerFast, peft_model) -> None:  # type: ignore[no-untyped-def]
    data = examples()
    fast = label_scores(peft_model, tokenizer, SST2, data, batch_size=3)
    general = label_scores(peft_model, tokenizer, SST2, data, batch_size=5, force_general=True)
    assert torch.allclose(fast, general, atol=1e-5)


def test_multi_token_labels_hand_computed(tokenizer: PreTrainedTokenizerFast, peft_model) -> None:  # type: ignore[no-untyped-def]
    data = examples()[:3]
    scores = label_scores(peft_model, tokenizer, MULTI, data, batch_size=2)
    ex = data[1]
    for j, word in enumerate(MULTI.label_words):
        prompt = tokenizer(MULTI.prompt(ex))["input_ids"]
        comp = tokenizer(word, add_special_tokens=False)["input_ids"]
        ids = torch.tensor([prompt + comp])
        with torch.inference_mode():
            logp = torch.log_softmax(peft_model(input_ids=ids).logits[0].double(), dim=-1)
        total = sum(float(logp[len(prompt) - 1 + i, t]) for i, t in enumerate(comp))
        assert scores[1, j].item() == pytest.approx(total, abs=1e-4)
    metrics = evaluate(peft_model, tokenizer, MULTI, data)
    assert 0.0 <= metrics["accuracy"] <= 1.0


def test_scoring_without_logits_to_keep_matches(
    tokenizer: PreTrainedTokenizerFast,
    peft_model,  # type: ignore[no-untyped-def]
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pass

    data = examples()
    fast = label_scores(peft_model, tokenizer, SST2, data, batch_size=3)
    multi = label_scores(peft_model, tokenizer, MULTI, data, batch_size=3)
    monkeypatch.setattr(scoring, "_accepts_logits_to_keep", lambda model: False)
    assert torch.allclose(label_scores(peft_model, tokenizer, SST2, data, batch_size=3), fast, atol=1e-5)
    assert torch.allclose(label_scores(peft_model, tokenizer, MULTI, data, batch_size=3), multi, atol=1e-5)


def test_input_validation(tokenizer: PreTrainedTokenizerFast, peft_model) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError):
        predict_label_probs(peft_model, tokenizer, GEN, [Example(text="x", target="y")])
    with pytest.raises(ValueError):
        encode(tokenizer, SST2, examples()[:1], max_length=1)
    other = attach_lora(make_model(len(tokenizer)), LoraConfig(r=2), seed=0)
    state = train_steps(
        other, tokenizer, SST2, examples(), steps=1, batch_size=2, lr=1e-3, max_length=32, seed=0
    ).optimizer_state
    with pytest.raises(ValueError, match="different trainable parameters"):
        train_steps(
            peft_model,
            tokenizer,
            SST2,
            examples(),
            steps=1,
            batch_size=2,
            lr=1e-3,
            max_length=32,
            seed=0,
            optimizer_state=state,
        )


def test_linear_lr_schedule(tokenizer: PreTrainedTokenizerFast) -> None:
    runs = {}
    for schedule in ("constant", "linear"):
        model = attach_lora(make_model(len(tokenizer)), LoraConfig(dropout=0.0), seed=0)
        runs[schedule] = train_steps(
            model, tokenizer, SST2, examples(), steps=3, batch_size=4, lr=1e-2, max_length=32, seed=0,
            lr_schedule=schedule,
        ).losses  # fmt: skip
    assert runs["constant"][:2] == runs["linear"][:2]  # step 0 uses the full lr in both (step 1 sees it)
    assert runs["constant"][2] != runs["linear"][2]
    with pytest.raises(ValueError, match="lr_schedule"):
        train_steps(
            model, tokenizer, SST2, examples(), steps=1, batch_size=4, lr=1e-2, max_length=32, seed=0,
            lr_schedule="cosine",  # type: ignore[arg-type]
        )  # fmt: skip
