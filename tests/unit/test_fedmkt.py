"""FedMKT without Ray: payload checks, client distillation on the tiny model, alignment + selection + records
on hand-made tokenisations, configuration and jobs."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch

from estuary.client.knowledge_transfer import public_sequences, topk_knowledge
from estuary.data.task import Example, Task
from estuary.knowledge.alignment import VocabMapping
from estuary.lm.distill import distill_example, distill_steps
from estuary.lm.lora import LoraConfig
from estuary.lm.model import adapter_state, attach_lora, load_adapter_state, load_base
from estuary.serve.types import PositionTopK, TextTopK, TopKLogprobs
from estuary.strategies.fedmkt_knowledge import (
    KnowledgeRejected,
    check_client_knowledge,
    choose_teacher,
    completion_start,
    distill_record,
    mix_rows,
    mutual_exchange,
    topk_cross_entropy,
)
from estuary.wire import ClientTask

SST2 = Task(name="toy", kind="classification", template="Review: {text}\nSentiment:",
            label_words=(" negative", " positive"), label_names=("negative", "positive"))
PUBLIC = [Example(text="a great film with fine acting", label=1), Example(text="a dull boring mess", label=0),
          Example(text="the plot is thin", label=0)]


def ln(*ps: float) -> list[float]:
    return [math.log(p) for p in ps]


def text(ids: list[int], rows: list[tuple[list[int], list[float]]]) -> TextTopK:
    return TextTopK(text="t", token_ids=ids, tokens=[str(i) for i in ids],
                    token_logprobs=[None, *[-0.5] * (len(ids) - 1)],
                    topk=[PositionTopK(ids=i, tokens=[str(x) for x in i], logprobs=lp) for i, lp in rows])


def payload(texts: list[TextTopK], k: int = 2, model: str = "m") -> TopKLogprobs:
    return TopKLogprobs(model=model, adapter=None, k=k, engine="transformers", dtype="float32", texts=texts)


def good_text() -> TextTopK:
    return text([1, 2, 3], [([2, 4], ln(0.6, 0.3)), ([3, 1], ln(0.7, 0.2)), ([0, 1], ln(0.5, 0.4))])


# ------------------------------------------------------------------------------ payload checks


def test_valid_payload_is_accepted() -> None:
    got = check_client_knowledge("c000", payload([good_text(), good_text()]).to_dict(), texts=2, vocab_size=10)
    assert len(got.texts) == 2 and got.k == 2


@pytest.mark.parametrize(("mutate", "why"), [
    (lambda d: d["texts"][1]["topk"][0]["logprobs"].__setitem__(0, float("nan")), "nan"),
    (lambda d: d["texts"][0]["topk"][2]["logprobs"].__setitem__(1, float("-inf")), "-inf"),
    (lambda d: d["texts"][0]["token_logprobs"].__setitem__(2, float("nan")), "nan"),
    (lambda d: d["texts"][1]["topk"][1].update(ids=[], tokens=[], logprobs=[]), "expected 2"),
    (lambda d: d["texts"][0]["topk"].pop(), "lengths differ"),
    (lambda d: d["texts"].pop(), "expected one per public example"),
    (lambda d: d["texts"][0].update(token_ids=[], tokens=[], token_logprobs=[], topk=[]), "nothing to distil"),
    (lambda d: d["texts"][0]["topk"][0]["ids"].__setitem__(0, 99), "outside the vocabulary"),
    (lambda d: d.__setitem__("schema_version", 7), "schema_version"),
])
def test_malformed_payload_is_rejected_with_the_client_named(mutate: Any, why: str) -> None:
    data = payload([good_text(), good_text()]).to_dict()
    mutate(data)
    with pytest.raises(KnowledgeRejected, match=rf"client c007: knowledge rejected: .*{why}"):
        check_client_knowledge("c007", data, texts=2, vocab_size=10)


def test_missing_payload_is_rejected() -> None:
    with pytest.raises(KnowledgeRejected, match="client c001: knowledge rejected: no top-k payload"):
        check_client_knowledge("c001", None, texts=1)


# ------------------------------------------------------------------------------ client side (tiny model)


@pytest.fixture(scope="module")
def tiny(tiny_model_dir: Path) -> tuple[Any, Any]:
    model, tok = load_base(str(tiny_model_dir))
    return attach_lora(model, LoraConfig(r=8, alpha=16, dropout=0.0), seed=0), tok


def test_client_topk_payload_passes_the_server_checks(tiny: tuple[Any, Any]) -> None:
    model, tok = tiny
    seqs = public_sequences(tok, SST2, PUBLIC, 64)
    items = topk_knowledge(model, tok, seqs, ["x"] * len(seqs), k=4, batch_size=2)
    data = payload(items, k=4).to_dict()
    got = check_client_knowledge("c000", data, texts=len(PUBLIC), vocab_size=len(tok.get_vocab()))
    assert [t.token_ids for t in got.texts] == [ids for ids, _ in seqs]
    first = got.texts[0]
    with torch.inference_mode():
        logp = torch.log_softmax(model(input_ids=torch.tensor([first.token_ids])).logits[0].float(), -1)
    assert first.token_logprobs[1] == pytest.approx(float(logp[0, first.token_ids[1]]), abs=1e-4)
    assert first.topk[0].ids[0] == int(logp[0].argmax())


def test_distill_steps_moves_the_model_towards_a_fixed_target(tiny: tuple[Any, Any]) -> None:
    model, tok = tiny
    target_ids, target_lps = [5, 6, 7], ln(0.7, 0.2, 0.05)
    examples = []
    for ids, start in public_sequences(tok, SST2, PUBLIC, 64):
        rows = ([list(target_ids) for _ in ids], [list(target_lps) for _ in ids])
        examples.append(distill_example(ids, start, rows, lm_loss="completion"))
    assert [sum(t != -100 for t in ex.labels) for ex in examples] == [1, 1, 1]  # the label word only
    before = adapter_state(model)
    try:
        res = distill_steps(model, tok, examples, steps=8, batch_size=3, lr=3e-2, seed=0, distill_weight=1.0)
        kd = res.kd_losses  # a random tiny model with LoRA on q/v: the KL falls, slowly (about 6.1 → 5.7)
        assert len(kd) == 8 and kd[-1] < kd[0] - 0.25 and min(kd[4:]) < min(kd[:2])
        assert res.lm_losses == [0.0] * 8  # λ = 1: no LM term computed
        again = distill_steps(model, tok, examples, steps=2, batch_size=3, lr=1e-3, seed=0, distill_weight=0.1,
                              optimizer_state=res.optimizer_state)
        assert again.optimizer_state["step"] == 10
        assert all(a > 0 for a in again.lm_losses) and again.losses[0] == pytest.approx(
            0.9 * again.lm_losses[0] + 0.1 * again.kd_losses[0], rel=1e-4)
    finally:
        load_adapter_state(model, before)


def test_distill_example_masks() -> None:
    rows = ([[1]] * 4, [[-0.1]] * 4)
    assert distill_example([1, 2, 3, 4], 2, rows, lm_loss="text").labels == [-100, 2, 3, 4]
    assert distill_example([1, 2, 3, 4], 2, rows, lm_loss="completion").labels == [-100, -100, 3, 4]
    with pytest.raises(ValueError, match="3 target rows"):
        distill_example([1, 2, 3, 4], 2, ([[1]] * 3, [[-0.1]] * 3))


# ------------------------------------------------------------------------------ selection + records


def test_topk_cross_entropy_by_hand() -> None:
    rows = ([[2, 5], [], [9]], [ln(0.5, 0.25), [], ln(0.5)])
    # token 2 in row 0: log .5; row 1 empty: uniform over 10; token 3 not in row 2: tail .5 over 9 others
    want = -(math.log(0.5) - math.log(10) + math.log(0.5 / 9)) / 3
    assert topk_cross_entropy(rows, [0, 2, 7, 3], 10) == pytest.approx(want)


def test_mix_rows_and_weighted_mean() -> None:
    a = ([[1, 2]], [ln(0.6, 0.4)])
    b = ([[2, 3]], [ln(0.5, 0.5)])
    ids, lps = mix_rows([a, b], [0.5, 0.5])
    assert ids == [[2, 1, 3]] and np.allclose(np.exp(lps[0]), [0.45, 0.3, 0.25])
    rows, best, ces = choose_teacher({"self": a, "x": b}, [0, 2], 10, "weighted_mean")
    assert best == "x" and ces["x"] < ces["self"] and set(rows[0][0]) == {1, 2, 3}


class FakeVocab:
    """LLM: one word per token. Client A: BOS, 'movie' split in two, other ids. Client B: the LLM's vocabulary."""

    TEXTS = {"llm": ["", "the", "movie", "was", "great", "bad", "good"],
             "a": ["", "great", "the", "mov", "ie", "was", "bad"]}
    MAPS = {("a", "llm"): [0, 4, 1, 2, 2, 3, 5], ("llm", "a"): [0, 2, 3, 5, 1, 6, 1]}

    def texts(self, spec: str) -> list[str]:
        return self.TEXTS["llm" if spec == "b" else spec]

    def mapping(self, src: str, dst: str) -> VocabMapping:
        if "b" in (src, dst):
            return VocabMapping(np.arange(7), np.ones(7, dtype=bool))
        ids = np.array(self.MAPS[src, dst])
        return VocabMapping(ids, np.array([self.texts(src)[i] == self.texts(dst)[j] for i, j in enumerate(ids)]))


def test_mutual_exchange_builds_records_from_the_better_aligned_client() -> None:
    # "the movie was great": LLM [the movie was great], client a [<s> the mov ie was great]
    llm = payload([text([1, 2, 3, 4], [([2, 5], ln(0.5, 0.3)), ([3, 4], ln(0.5, 0.2)), ([5, 4], ln(0.6, 0.3)),
                                       ([5, 6], ln(0.5, 0.1))])])
    client_a = payload([text([0, 2, 3, 4, 5, 1], [([2, 6], ln(0.9, 0.05)), ([3, 4], ln(0.8, 0.1)),
                                                   ([4, 3], ln(0.9, 0.05)), ([5, 1], ln(0.9, 0.05)),
                                                   ([1, 6], ln(0.8, 0.1)), ([6, 1], ln(0.5, 0.1))])])
    client_b = payload([text([1, 2, 3, 4], [([5, 2], ln(0.6, 0.2)), ([4, 3], ln(0.6, 0.2)), ([5, 4], ln(0.9, 0.05)),
                                            ([5, 6], ln(0.5, 0.1))])])
    ex = mutual_exchange("llm", llm, {"c000": ("a", client_a), "c001": ("b", client_b)}, FakeVocab(),
                         metric="aligned")
    # the LLM distils towards client a on its own tokens; a's rows carried to LLM positions and ids
    assert ex.llm_choices == {"c000": 1} and ex.clients["c000"].chosen_by_llm == 1
    (record,) = ex.records
    assert record["input_ids"] == [1, 2, 3, 4]
    assert record["topk_ids"][0] == [2]  # after "the": a's "mov" and "ie" both map to "movie", merged
    assert record["topk_logprobs"][0] == pytest.approx([math.log(0.9)])
    assert record["topk_ids"][1:3] == [[3, 4], [4, 5]]  # after "movie" (a's row after "ie"), after "was"
    assert record["topk_logprobs"][2] == pytest.approx(ln(0.8, 0.1))
    a = ex.clients["c000"]
    assert a.coverage_to_llm == [pytest.approx(0.75)]  # the, was, great one-to-one; movie ↔ mov+ie is not
    assert a.coverage_from_llm == [pytest.approx(3 / 6)]  # the, was, great of a's 6 positions (BOS unaligned)
    assert a.vocab_exact_to_llm == pytest.approx(5 / 7) and a.positions == 6
    # a is better on its own tokens than the aligned LLM: it keeps itself; b (LLM tokenizer) is worse: takes LLM
    own = client_a.texts[0].topk
    assert a.took_llm == 0 and a.targets[0] == ([p.ids for p in own], [p.logprobs for p in own])
    b = ex.clients["c001"]
    assert b.took_llm == 1 and b.targets[0][0] == [[2, 5], [3, 4], [5, 4], [5, 6]]
    assert b.coverage_to_llm == [1.0] and b.vocab_exact_to_llm == 1.0


def test_own_metric_ranks_teachers_by_their_own_cross_entropy() -> None:
    """FuseLLM/FedMKT's metric_ce: each model's CE on the text in its own tokenisation, whatever its rows lose
    in alignment. b (CE 0.2) beats the LLM (0.5), which beats a (0.9): the LLM takes b, a takes the LLM, b keeps
    itself — the aligned metric above chose a for the LLM, and a kept itself."""
    def with_ce(item: TextTopK, ce: float) -> TextTopK:
        return TextTopK(text=item.text, token_ids=item.token_ids, tokens=item.tokens, topk=item.topk,
                        token_logprobs=[None, *[-ce] * (len(item.token_ids) - 1)])

    rows = [([2, 5], ln(0.5, 0.3)), ([3, 4], ln(0.5, 0.2)), ([5, 4], ln(0.6, 0.3)), ([5, 6], ln(0.5, 0.1))]
    llm = payload([with_ce(text([1, 2, 3, 4], rows), 0.5)])
    client_a = payload([with_ce(text([0, 2, 3, 4, 5, 1], [([2, 6], ln(0.9, 0.05))] * 6), 0.9)])
    client_b = payload([with_ce(text([1, 2, 3, 4], rows), 0.2)])
    ex = mutual_exchange("llm", llm, {"c000": ("a", client_a), "c001": ("b", client_b)}, FakeVocab())
    assert ex.llm_choices == {"c001": 1} and ex.clients["c001"].chosen_by_llm == 1
    assert ex.clients["c000"].took_llm == 1 and ex.clients["c001"].took_llm == 0
    ces = choose_teacher({"self": ([[1]], [[-0.1]]), "x": ([[2]], [[-0.1]])}, [0, 1], 10, own_ces={"self": 1.0,
                         "x": 2.0})[2]
    assert ces == {"self": 1.0, "x": 2.0}


def test_completion_ground_truth_ranks_teachers_on_the_label_and_masks_the_prompt() -> None:
    """FedMKT's reference code masks the prompt (-100): a teacher's own CE and the LLM's LM term count only the
    completion. The LLM predicts the prompt far better (0.1 vs 3.0 per token) but the label word worse (2.0 vs
    0.3): over the whole text it wins, over the completion b wins, and the LLM's record trains on 'great'."""
    rows = [([2, 5], ln(0.5, 0.3))] * 4
    llm_item, b_item = text([1, 2, 3, 4], rows), text([1, 2, 3, 4], rows)
    llm = payload([TextTopK(text=llm_item.text, token_ids=llm_item.token_ids, tokens=llm_item.tokens,
                            topk=llm_item.topk, token_logprobs=[None, -0.1, -0.1, -2.0])])
    client_b = payload([TextTopK(text=b_item.text, token_ids=b_item.token_ids, tokens=b_item.tokens,
                                 topk=b_item.topk, token_logprobs=[None, -3.0, -3.0, -0.3])])
    whole = mutual_exchange("llm", llm, {"c001": ("b", client_b)}, FakeVocab())
    assert whole.llm_choices == {"llm": 1} and whole.clients["c001"].took_llm == 1
    assert "sft_from" not in whole.records[0]
    label = mutual_exchange("llm", llm, {"c001": ("b", client_b)}, FakeVocab(),
                            completion_ids={"llm": [[4]], "b": [[4]]})
    assert label.llm_choices == {"c001": 1} and label.clients["c001"].took_llm == 0
    assert label.records[0]["sft_from"] == 3
    # the start is where the text's tokens end with the completion's; none shared: no ground truth (KD only)
    assert completion_start([1, 2, 3, 4], [3, 4]) == 2 and completion_start([1, 2, 3, 4], None) == 0
    assert completion_start([1, 2, 3, 4], [9]) == 4
    assert distill_record([1, 2], ([[1], [2]], [[-0.1], [-0.1]]), 2)["sft"] is False


def test_exchange_metrics_and_rows() -> None:
    from estuary.strategies.fedmkt import _exchange_metrics, model_label

    llm = payload([text([1, 2, 3, 4], [([2, 5], ln(0.5, 0.3))] * 4)])
    client_b = payload([text([1, 2, 3, 4], [([2, 5], ln(0.9, 0.05))] * 4)])
    ex = mutual_exchange("llm", llm, {"c001": ("b", client_b)}, FakeVocab())
    m = _exchange_metrics(ex, 1)
    assert m["align/b/seq_coverage"] == 1.0 and m["align/b/vocab_exact"] == 1.0
    assert m["select/llm_self"] + m["select/llm_from_clients"] == 1
    assert model_label("/tmp/x/tiny-llama0/") == "tiny-llama0" and model_label("smollm2-135m") == "smollm2-135m"


# ------------------------------------------------------------------------------ config and jobs


def test_config_validation() -> None:
    from estuary.errors import ConfigError
    from estuary.registry import build_params

    p = build_params("fedmkt", {"top_k": 8, "selection": "weighted_mean"})
    assert p.top_k == 8 and p.distill_weight == 0.1 and p.temperature == 1.0
    with pytest.raises(ConfigError, match="did you mean 'top_k'"):
        build_params("fedmkt", {"topk": 8})
    with pytest.raises(ConfigError, match="selection"):
        build_params("fedmkt", {"selection": "best"})


@pytest.mark.parametrize("job", ["fedmkt-sst2", "fedmkt-sst2-homo", "fedmkt-sst2-one2one", "fedmkt-agnews",
                                 "fedmkt-rte"])
def test_jobs_load(job: str) -> None:
    from estuary.platform.loading import load_config

    cfg = load_config(Path(__file__).resolve().parents[2] / "jobs" / f"{job}.yaml")
    assert cfg.method == "fedmkt" and cfg.baselines[:4] == ["zero_shot", "standalone", "centralized", "llm_centralized"]
    models = {cfg.models.for_client(i) for i in range(cfg.clients.count)}
    assert ("fedavg" in cfg.baselines) == (len(models) == 1 and cfg.clients.count > 1)  # FedAvg: homogeneous, ≥ 2
    assert cfg.method_params["top_k"] <= cfg.server.max_logprobs


def test_top_k_is_clamped_to_the_servers_logprobs() -> None:
    """Published k = 128 is the default; a deployment that returns fewer (server.max_logprobs) clamps it for the
    LLM and the clients alike, instead of refusing the job."""
    from estuary.platform.loading import load_config
    from estuary.registry import build_params, get

    assert build_params("fedmkt", {}).top_k == 128
    job = Path(__file__).resolve().parents[2] / "jobs" / "fedmkt-sst2.yaml"
    for overrides, k in (([], 128), (["server.max_logprobs=20"], 20), (["method_params.top_k=16"], 16)):
        cfg = load_config(job, overrides)
        strategy = get("fedmkt")(cfg, build_params("fedmkt", cfg.method_params))
        assert strategy.top_k() == k


# ------------------------------------------------------------------------------ the round's order (no Ray)


class FakeLLM:
    """The deployment's top-k on the one public text, different per adapter version, every call recorded. The
    LLM's own CE (0.1 a token) beats the client's (0.5): the LLM keeps itself, the client takes the LLM."""

    ROWS = {None: [([2, 5], ln(0.5, 0.3))] * 4, "fedmkt@v1": [([3, 6], ln(0.6, 0.2))] * 4,
            "fedmkt@v2": [([4, 1], ln(0.7, 0.1))] * 4}

    def __init__(self) -> None:
        self.calls: list[tuple[str | None, int]] = []

    def topk_logprobs(self, texts: list[str], k: int = 5, adapter: str | None = None) -> TopKLogprobs:
        self.calls.append((adapter, k))
        item = text([1, 2, 3, 4], self.ROWS[adapter])
        item = TextTopK(text=item.text, token_ids=item.token_ids, tokens=item.tokens, topk=item.topk,
                        token_logprobs=[None, -0.1, -0.1, -0.1])
        return TopKLogprobs(model="llm", adapter=adapter, k=k, engine="fake", dtype="float32", texts=[item])


def _fedmkt_round_setup(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, **params: Any) -> tuple[Any, Any, list]:
    """FedMKT on one client whose model has the LLM's vocabulary ("b" of FakeVocab), one public text, a fake
    deployment, and a fake LLM fine-tune that publishes fedmkt@v<round> and keeps the records it was given."""
    from estuary.platform.loading import load_config
    from estuary.registry import build_params, get
    from estuary.strategies.fedmkt import FedMKT
    from tests.conftest import tiny_job

    job = tiny_job(tmp_path, tmp_path, method="fedmkt", baselines=[], clients={"count": 1},
                   models={"client": "b"}, server={"model": "llm", "max_logprobs": 20},
                   method_params={"public_size": 1, "lm_loss": "text", "llm_eval_size": 0, **params})
    cfg = load_config(base=job)
    strategy = get("fedmkt")(cfg, build_params("fedmkt", cfg.method_params))
    strategy.vocab = FakeVocab()  # type: ignore[assignment]
    trained: list[list[dict[str, Any]]] = []

    def fake_train(self: Any, rnd: int, server: Any, records: list[dict[str, Any]]) -> tuple[str, dict[str, float]]:
        trained.append(records)
        return f"fedmkt@v{rnd}", {}

    monkeypatch.setattr(FedMKT, "_train_llm", fake_train)
    rows: list[dict[str, Any]] = []
    server = SimpleNamespace(llm=FakeLLM(), task=SST2, log=lambda msg: rows.append({"log": msg}),
                             record=lambda name, r: rows.extend(r))
    return strategy, server, [trained, rows]


def _fedmkt_round(strategy: Any, server: Any, rnd: int) -> tuple[dict[str, float], list[Any]]:
    from estuary.wire import Egress, RoundOutcome

    client = payload([text([1, 2, 3, 4], [([2, 5], ln(0.9, 0.05))] * 4)], model="b")
    outcome = RoundOutcome(results={"c000": Egress("c000", rnd, "fedmkt", payload={"topk": client.to_dict()})},
                           failures={})
    metrics = strategy.server_step(rnd, strategy.aggregate(rnd, outcome), server)
    (task,) = strategy.configure_followup(rnd, outcome)
    return metrics, task.params["targets"]


def test_slms_distil_from_the_llm_version_published_this_round(monkeypatch: pytest.MonkeyPatch,
                                                               tmp_path: Path) -> None:
    """The reference recomputes the LLM's logits after its update (on_epoch_end) and the SLMs distil from
    those: round r's LLM trains on knowledge from the version before, publishes v_r, and the clients' targets
    come from v_r's top-k. That top-k is also the LLM's own candidate in round r+1 (no second call for it)."""
    strategy, server, (trained, rows) = _fedmkt_round_setup(monkeypatch, tmp_path)
    metrics, targets = _fedmkt_round(strategy, server, 1)
    assert server.llm.calls == [(None, 20), ("fedmkt@v1", 20)]  # k = 128 clamped to max_logprobs 20
    assert trained[0][0]["topk_ids"][0] == [2, 5]  # the LLM trained towards itself before its update
    assert targets[0][0] == [[3, 6]] * 4 and targets[0][1][0] == pytest.approx(ln(0.6, 0.2))  # v1's rows
    assert metrics["llm/adapter_version"] == metrics["llm/slm_targets_version"] == 1.0
    assert metrics["knowledge/k"] == 20 and metrics["select/clients_took_llm"] == 1
    assert metrics["knowledge/llm_topk_seconds"] >= 0  # the served LLM's top-k calls, timed apart
    server_row = next(r for r in rows if r.get("client") == "server")
    assert server_row["adapter"] is None and server_row["targets_adapter"] == "fedmkt@v1"
    assert any("clamped to server.max_logprobs 20" in r.get("log", "") for r in rows)
    metrics, targets = _fedmkt_round(strategy, server, 2)
    assert server.llm.calls[2:] == [("fedmkt@v2", 20)]  # round 2's own candidate is v1's cached top-k
    assert trained[1][0]["topk_ids"][0] == [3, 6] and targets[0][0] == [[4, 1]] * 4
    assert metrics["llm/slm_targets_version"] == 2.0


def test_previous_round_targets_keep_the_old_order(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    strategy, server, _ = _fedmkt_round_setup(monkeypatch, tmp_path, slm_targets="previous_round")
    metrics, targets = _fedmkt_round(strategy, server, 1)
    assert server.llm.calls == [(None, 20)] and targets[0][0] == [[2, 5]] * 4
    assert metrics["llm/adapter_version"] == 1.0 and metrics["llm/slm_targets_version"] == 0.0
    metrics, targets = _fedmkt_round(strategy, server, 2)
    assert server.llm.calls[1:] == [("fedmkt@v1", 20)] and targets[0][0] == [[3, 6]] * 4


def test_both_sides_pass_over_the_public_set_once_a_round(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """public_epochs (1.0) sets the steps: ceil(epochs × public samples / batch), the LLM's batch its global one
    (micro_batch_size × grad_accum × workers); explicit distill_steps / llm_train.steps win."""
    from estuary.lm.seeding import epoch_steps
    from estuary.strategies import fedmkt as fedmkt_module

    assert [epoch_steps(256, 8), epoch_steps(256, 4), epoch_steps(6, 4), epoch_steps(5, 4, 2.0)] == [32, 64, 2, 3]
    assert epoch_steps(1, 8) == 1 and epoch_steps(10, 4, 0.5) == 2 and epoch_steps(12, 4, 0.1) == 1
    with pytest.raises(ValueError):
        epoch_steps(0, 4)
    strategy, server, _ = _fedmkt_round_setup(monkeypatch, tmp_path)
    monkeypatch.undo()  # the real _train_llm, with the fine-tune itself faked
    configs: list[dict[str, Any]] = []
    monkeypatch.setattr(fedmkt_module, "train_server_adapter",
                        lambda s, rnd, srv, records, config, **kw: (configs.append(config), ("v", {}))[1])
    records = [{"input_ids": [1, 2]}] * 10
    strategy.params.llm_train = {"workers": 2, "micro_batch_size": 2}
    strategy._train_llm(1, server, records)
    strategy.params.llm_train = {"workers": 1, "micro_batch_size": 2, "grad_accum": 2, "steps": 7}
    strategy._train_llm(1, server, records)
    assert [c["steps"] for c in configs] == [3, 7]  # ceil(10 / 4); the explicit steps
    seen: list[int] = []
    monkeypatch.setattr("estuary.client.knowledge_transfer.client_distill",
                        lambda ctx, rnd, public, targets, *, steps, **kw: seen.append(steps))
    ctx = SimpleNamespace(egress=lambda task, **kw: kw, evaluate=lambda task: {})
    public = [PUBLIC[0]] * 20
    strategy.client_step(ctx, ClientTask("c000", 1, kind="distill", params={"public": public, "targets": [1]}))
    strategy.params.distill_steps = 3
    strategy.client_step(ctx, ClientTask("c000", 1, kind="distill", params={"public": public, "targets": [1]}))
    assert seen == [5, 3]  # ceil(20 / training.batch_size 4); the explicit steps


def test_the_llm_is_evaluated_on_the_clients_evaluation_rounds(monkeypatch: pytest.MonkeyPatch,
                                                                tmp_path: Path) -> None:
    """The served LLM is measured at its start and then when the clients are (evaluation.every; the last round
    always), not after every round."""
    from estuary.strategies.fedmkt import FedMKT

    strategy, server, _ = _fedmkt_round_setup(monkeypatch, tmp_path, llm_eval_size=4)
    strategy.exp.evaluation.every = 5
    strategy.exp.rounds = 2
    evaluated: list[str | None] = []

    def fake_eval(self: Any, server: Any, version: str | None) -> dict[str, float]:
        evaluated.append(version)
        return {"test/accuracy": 0.5}

    monkeypatch.setattr(FedMKT, "_evaluate_llm", fake_eval)
    seen = [_fedmkt_round(strategy, server, rnd)[0] for rnd in (1, 2)]
    assert evaluated == [None, "fedmkt@v2"]  # the start, then round 2 (the last), not round 1
    assert "llm_start/test/accuracy" in seen[0] and "llm/test/accuracy" not in seen[0]
    assert seen[1]["llm/test/accuracy"] == 0.5

