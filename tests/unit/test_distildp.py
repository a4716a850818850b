"""DistilDP: its three losses against hand-computed values, sample parsing, the teacher's rows carried into
the student's tokenisation (same and different tokenizers and widths), and the student's training step."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from estuary.client.dp_generator import control_template
from estuary.data import get_task
from estuary.data.task import Example
from estuary.errors import ConfigError
from estuary.lm.distill import DistillExample, distill_example, distill_steps
from estuary.lm.lora import LoraConfig
from estuary.lm.model import adapter_state, attach_lora, load_adapter_state, load_base
from estuary.lm.objective import hidden_mse_loss, objective
from estuary.platform.loading import load_config
from estuary.strategies.distildp_client import synthetic_example, teacher_targets
from tests.conftest import build_tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")
E2E = get_task("e2e")
YELP = get_task("yelp-gen")


# ------------------------------------------------------------------------------ the three losses by hand


def test_hidden_mse_by_hand_with_projection() -> None:
    student = torch.tensor([[[1.0, 2.0], [5.0, 5.0]]])  # [B=1, L=2, Ds=2]
    teacher = torch.tensor([[[1.0, 0.0, 2.0], [9.0, 9.0, 9.0]]])  # [1, 2, Dt=3]
    proj = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])  # [Dt, Ds]: (h1, h2, h1 + h2)
    mask = torch.tensor([[True, False]])  # only position 0 counts
    loss, n = hidden_mse_loss(student, teacher, mask, proj)
    # W h = (1, 2, 3); ‖(1,2,3) - (1,0,2)‖² = 0 + 4 + 1 = 5; ‖h_t‖² = 1 + 0 + 4 = 5 → 1.0
    assert n == 1 and float(loss) == pytest.approx(1.0)
    loss_eq, _ = hidden_mse_loss(teacher, teacher * 0.5, torch.tensor([[True, True]]))
    # same width, no projection: Σ(0.5 h)² / Σ(0.5 h)² = 1 (student is twice the teacher)
    assert float(loss_eq) == pytest.approx(1.0)
    assert hidden_mse_loss(student, teacher, torch.zeros((1, 2), dtype=torch.bool), proj)[1] == 0
    with pytest.raises(ValueError, match="give a projection"):
        hidden_mse_loss(student, teacher, mask)


def test_hard_and_soft_labels_by_hand() -> None:
    # Vocabulary of 3, one sequence of 2 tokens: position 0 predicts token 1 (= id 2).
    logits = torch.tensor([[[0.0, 1.0, 2.0], [0.0, 0.0, 0.0]]])
    labels = torch.tensor([[-100, 2]])
    # Teacher at position 0: p(2) = 0.7, p(1) = 0.2 (top-2), tail 0.1 (id 0).
    topk_ids = torch.tensor([[[2, 1], [0, 0]]])
    topk_lps = torch.tensor([[[math.log(0.7), math.log(0.2)], [-math.inf, -math.inf]]])
    q = torch.softmax(logits[0, 0], -1).tolist()  # student at position 0
    ce = -math.log(q[2])
    kl = 0.7 * math.log(0.7 / q[2]) + 0.2 * math.log(0.2 / q[1]) + 0.1 * math.log(0.1 / q[0])
    parts = objective(logits, labels, topk_ids, topk_lps, distill_weight=0.4)
    assert float(parts.sft) == pytest.approx(ce, rel=1e-5)
    assert float(parts.kd) == pytest.approx(kl, rel=1e-5)
    assert float(parts.loss) == pytest.approx(0.6 * ce + 0.4 * kl, rel=1e-5)
    hard = objective(logits, labels, topk_ids, topk_lps, distill_weight=0.0)  # the hard-label-only twin
    assert float(hard.loss) == pytest.approx(ce, rel=1e-5) and hard.kd_positions == 0


# ------------------------------------------------------------------------------ samples


def test_e2e_samples_parse_into_meaning_representation_and_target() -> None:
    ex = synthetic_example(E2E, "name[The Eagle], eatType[pub], customer rating[5 out of 5] The Eagle is a pub.", "u")
    assert ex is not None
    assert ex.text == "name[The Eagle], eatType[pub], customer rating[5 out of 5]"
    assert ex.target == " The Eagle is a pub."
    assert E2E.prompt(ex).startswith("Restaurant attributes: name[The Eagle]")
    for bad in ("The Eagle is a pub.", "name[The Eagle", "name[The Eagle]", "name[The Eagle], eatType[pub]",
                "name[The Eagle], eatType[pu", "name[The Eagle] a pub, near[Café Rouge]"):
        assert synthetic_example(E2E, bad, "u") is None
    assert synthetic_example(YELP, "Great tacos, friendly staff.", "u") == Example(
        text="Great tacos, friendly staff.", uid="u")


# ------------------------------------------------------------------------------ teacher rows → student


@pytest.fixture(scope="module")
def student(tiny_model_dir: Path) -> tuple[Any, Any]:
    model, tok = load_base(str(tiny_model_dir))
    return attach_lora(model, LoraConfig(r=4, alpha=8, dropout=0.0), seed=0), tok


@pytest.fixture(scope="module")
def wide_teacher(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any]:
    """Another vocabulary (E2E-like words, different ids) and width 48 (the student's is 32)."""
    words = ["the eagle is a pub near the river", "great food and friendly staff in the city centre",
             "name eattype pub food english", "the movie was good"]
    path = build_tiny_model(tmp_path_factory.mktemp("teacher"), words * 3, hidden_size=48)
    model, tok = load_base(str(path))
    return attach_lora(model, LoraConfig(r=4, alpha=8, dropout=0.0), seed=1), tok


TEXTS = ["the movie was good", "great food and friendly staff"]


def test_same_tokenizer_rows_are_the_teachers_at_the_same_tokens(student: tuple[Any, Any]) -> None:
    model, tok = student
    examples = [synthetic_example(YELP, t, f"synthetic/c000/r1/0/{i}") for i, t in enumerate(TEXTS)]
    got = teacher_targets(model, tok, tok, YELP, examples, TEXTS, student_model="s", k=3, max_length=64,
                          batch_size=2)
    ids = tok(TEXTS[0])["input_ids"]  # BOS + words
    t = got[0]
    # coverage counts positions taking an equal token: every word (after the teacher's control prefix), not BOS
    assert t.input_ids == ids and t.start == 1 and t.coverage == pytest.approx((len(ids) - 1) / len(ids))
    assert t.topk_ids[0] == [] and t.topk_ids[-1] == []  # BOS (no text) and the last token (nothing to predict)
    assert t.hidden_mask == (False, True, True, True, False) and t.hidden.dtype == np.float16
    # the teacher's own sequence "<subject line>Label: text\nText: the movie was good": its row after "movie"
    teacher_ids = tok(control_template(YELP).format(text="text"))["input_ids"] + tok(
        " the movie was good", add_special_tokens=False)["input_ids"]
    with torch.inference_mode():
        out = model(input_ids=torch.tensor([teacher_ids]), output_hidden_states=True)
    at = teacher_ids.index(ids[2])  # "movie"
    logp = torch.log_softmax(out.logits[0, at].float(), -1)
    assert t.topk_ids[2] == torch.topk(logp, 3).indices.tolist()
    assert t.topk_logprobs[2] == pytest.approx(torch.topk(logp, 3).values.tolist(), abs=1e-5)
    assert t.hidden[2] == pytest.approx(out.hidden_states[-1][0, at].numpy().astype(np.float16), abs=1e-2)


def test_other_tokenizer_and_width_map_rows_into_the_students_vocabulary(student: tuple[Any, Any],
                                                                         wide_teacher: tuple[Any, Any],
                                                                         tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ESTUARY_CACHE", str(tmp_path))  # the vocabulary mapping's disk cache
    s_model, s_tok = student
    t_model, t_tok = wide_teacher
    examples = [synthetic_example(YELP, t, f"u{i}") for i, t in enumerate(TEXTS)]
    got = teacher_targets(t_model, t_tok, s_tok, YELP, examples, TEXTS, student_model="s", k=4, max_length=64,
                          batch_size=2)
    vocab = len(s_tok)
    for t, text in zip(got, TEXTS, strict=True):
        assert t.input_ids == s_tok(text)["input_ids"] and t.hidden.shape == (len(t.input_ids), 48)
        learn = [bool(r) for r in t.topk_ids]
        assert learn == list(t.hidden_mask) and learn[0] is False and learn[-1] is False and any(learn)
        assert all(0 <= i < vocab for row in t.topk_ids for i in row)
        assert all(len(set(row)) == len(row) for row in t.topk_ids)  # merged duplicates after mapping
        assert 0.0 <= t.coverage <= 1.0
    # the student learns through a projection 32 → 48; the projection and the adapter both move
    ex = [DistillExample(*_base(t), t.hidden, t.hidden_mask) for t in got]
    proj = torch.nn.Parameter(torch.randn(48, 32, generator=torch.Generator().manual_seed(0)) / 32**0.5)
    before, proj0 = adapter_state(s_model), proj.detach().clone()
    try:
        res = distill_steps(s_model, s_tok, ex, steps=6, batch_size=2, lr=5e-2, seed=0, distill_weight=0.4,
                            hidden_weight=1.0, projection=proj)
        assert len(res.hidden_losses) == 6 and res.hidden_losses[-1] < res.hidden_losses[0]
        assert res.losses[0] == pytest.approx(0.6 * res.lm_losses[0] + 0.4 * res.kd_losses[0]
                                              + res.hidden_losses[0], rel=1e-4)
        assert not torch.equal(proj.detach(), proj0)
        assert "distill.projection" in res.optimizer_state["param_names"]
    finally:
        load_adapter_state(s_model, before)


def _base(t: Any) -> tuple[list[int], list[int], list[list[int]], list[list[float]]]:
    b = distill_example(t.input_ids, t.start, (t.topk_ids, t.topk_logprobs), lm_loss="completion")
    return b.input_ids, b.labels, b.topk_ids, b.topk_logprobs


# ------------------------------------------------------------------------------ job checks


def test_distildp_refuses_classification_tasks_and_mixed_students(tmp_path: Path) -> None:
    job = tmp_path / "job.yaml"
    job.write_text("method: distildp\nbaselines: []\ndata: {task: sst2}\n")
    with pytest.raises(ConfigError, match="data.task 'sst2' is a classification task, not a generation one"):
        load_config(job)
    job.write_text("method: distildp\nbaselines: []\ndata: {task: yelp-gen}\nclients: {count: 2}\n"
                   "models: {client: smollm2-135m, per_client: {1: gemma3-270m}}\n")
    with pytest.raises(ConfigError, match="one student model"):
        load_config(job)
    job.write_text("method: distildp\nbaselines: [dp_standalone]\ndata: {task: e2e}\n"
                   "method_params: {distill_weight: 0.4, hidden_weight: 0}\n")
    assert load_config(job).method == "distildp"
    job.write_text("method: fdkt\nbaselines: []\ndata: {task: e2e}\n")  # the shared check, the other way round
    with pytest.raises(ConfigError, match=r"fdkt transfers labelled task data; data.task 'e2e' is a generation "
                                          r"task, not a classification one — use sst2, agnews, yelp$"):
        load_config(job)
    job.write_text("method: crosslm\nbaselines: []\ndata: {task: rte}\n")  # RTE's examples are text pairs
    with pytest.raises(ConfigError, match=r"crosslm has the LLM write labelled task data; data.task 'rte' has text "
                                          r"pairs; it writes one text per example — use sst2, agnews, yelp$"):
        load_config(job)
    job.write_text("method: fedmkt\nbaselines: []\ndata: {task: rte}\n")  # FedMKT distils on any text
    assert load_config(job).data.task == "rte"


def test_methods_listing_shows_distildps_own_generator_defaults() -> None:
    from estuary.registry import describe

    rows = {k: v for k, v, _ in describe("distildp")}
    assert rows["generator.samples_per_label"] == "64" and rows["generator.max_new_tokens"] == "96"
    assert rows["distill_weight"] == "0.4"


def test_faithful_defaults_a_larger_teacher_no_hidden_term_and_the_kd_reduction(tmp_path: Path) -> None:
    """The paper compresses (GPT-2-Large → DistilGPT-2): a Qwen teacher for SmolLM2 students by default; the
    published commands set alpha_cos = 0 (no hidden-state term); the KL's reduction is an option. The teacher is
    privacy.generator_model when the job sets one, and the client's own SLM when neither is set."""
    from estuary.registry import build_params, get
    from estuary.strategies.distildp_config import DEFAULT_TEACHER

    p = build_params("distildp", {})
    assert p.teacher_model == DEFAULT_TEACHER == "qwen2.5-0.5b" and p.hidden_weight == 0.0
    assert p.distill_weight == 0.4 and p.temperature == 1.0 and p.kd_reduction == "batchmean"
    assert build_params("distildp", {"kd_reduction": "token_mean"}).kd_reduction == "token_mean"
    with pytest.raises(ConfigError, match="kd_reduction"):
        build_params("distildp", {"kd_reduction": "sum"})
    job = tmp_path / "job.yaml"
    job.write_text("method: distildp\nbaselines: [dp_standalone]\ndata: {task: e2e}\n")
    cfg = load_config(job)
    assert get("distildp").generator_model(cfg) == "qwen2.5-0.5b"
    assert get("dp_standalone").generator_model(cfg) is None  # the DP-SGD student trains the SLM itself
    cfg = load_config(job, ["privacy.generator_model=gemma3-270m"])
    assert get("distildp").generator_model(cfg) == "gemma3-270m"
    cfg = load_config(job, ["method_params.teacher_model=null"])
    assert get("distildp").generator_model(cfg) is None
    for name in ("distildp-yelp", "distildp-e2e"):  # the CPU jobs take the defaults
        cfg = load_config(Path(__file__).resolve().parents[2] / "jobs" / f"{name}.yaml")
        assert get("distildp").generator_model(cfg) == "qwen2.5-0.5b"
        assert build_params("distildp", cfg.method_params).hidden_weight == 0.0


def _teach_in_process(tmp_path: Path, model_dir: Path, task: str, max_length: int,
                      epsilon: float | None) -> tuple[Any, dict[str, Any]]:
    """DistilDP's teach phase for two clients on the tiny model, in this process (no Ray): (strategy, egress)."""
    from estuary.client.worker import ClientWorker
    from estuary.registry import build_params, get
    from tests.conftest import tiny_job

    job = tiny_job(tmp_path, model_dir, method="distildp", baselines=[], rounds=1, clients={"count": 2},
                   data={"task": task, "partition": "iid", "train_size": 40, "test_size": 8, "client_eval_max": 4},
                   training={"steps": 2, "batch_size": 4, "max_length": max_length},
                   privacy={"target_epsilon": epsilon},
                   method_params={"generator": {"epochs": 1, "batch_size": 4, "max_length": max_length,
                                                "samples_per_label": 3, "max_new_tokens": 12, "min_words": 1},
                                  "topk": 4, "teacher_model": None})  # the tiny SLM teaches itself
    cfg = load_config(base=job)
    worker = ClientWorker(cfg.model_dump_json(), {str(model_dir): str(model_dir)}, "w", 1)
    strategy = get("distildp")(cfg, build_params("distildp", cfg.params_of("distildp")))
    return strategy, {t.client_id: ClientWorker.run_task(worker, type(strategy), t, None)[0]
                      for t in strategy.configure_round(1, strategy.client_ids())}


def test_teach_with_privacy_off_reports_non_private_not_infinite_epsilon(tmp_path: Path,
                                                                         tiny_model_dir: Path) -> None:
    """privacy.target_epsilon: null (the non-private teacher of the claim's comparison): the round summary must
    not see ε = ∞ as a metric (statistics.pstdev of infinities raised at the end of a finished round)."""
    from estuary.platform.strategy import summarize_metrics

    _, sent = _teach_in_process(tmp_path, tiny_model_dir, "yelp-gen", 48, None)
    summary = summarize_metrics(sent)
    assert summary["privacy/non_private/mean"] == 1.0 and "privacy/epsilon/mean" not in summary
    assert all(math.isfinite(v) for v in summary.values())


def test_egress_refuses_infinite_metrics_in_one_line() -> None:
    from estuary.wire import Egress

    with pytest.raises(ValueError, match="metric 'privacy/epsilon' is not a finite number"):
        Egress("c000", 1, "s", metrics={"privacy/epsilon": math.inf})


def test_a_round_where_no_teacher_sample_parses_fails_in_one_line_and_keeps_the_samples(
        tmp_path: Path, tiny_model_dir: Path) -> None:
    """E2E samples must parse back into "attributes + description"; when none does, the students would silently
    stay at zero-shot (the first ε = 2 E2E bench run did): the round fails in one line, with every sample kept."""
    from types import SimpleNamespace

    from estuary.errors import RoundFailed
    from estuary.wire import RoundOutcome

    strategy, sent = _teach_in_process(tmp_path, tiny_model_dir, "e2e", 64, 8.0)
    # the tiny model's vocabulary (SST-2 words) has no brackets: no sample can carry a meaning representation
    assert all(eg.metrics["synthetic/unparsed"] == eg.metrics["synthetic/kept"] > 0 for eg in sent.values())
    recorded: dict[str, list[dict]] = {}
    server = SimpleNamespace(task=get_task("e2e"), log=print, record=lambda name, rows: recorded.setdefault(name, rows))
    agg = strategy.aggregate(1, RoundOutcome(results=sent, failures={}))
    with pytest.raises(RoundFailed, match=r"distildp round 1: none of the \d+ synthetic samples .* parse as e2e"):
        strategy.server_step(1, agg, server)  # type: ignore[arg-type]
    rows = recorded["synthetic"]
    assert len(rows) == sum(eg.metrics["synthetic/kept"] for eg in sent.values())
    assert not any(r["parsed"] for r in rows) and {r["client"] for r in rows} == {"c000", "c001"}


def test_e2e_generator_writes_from_inside_the_format(student: tuple[Any, Any]) -> None:
    """E2E's public prefix ends the DP generator's prompt: it learns what follows `name[`, and its samples get
    the prefix back (an ε = 2 teacher without it never wrote a parseable sample)."""
    from estuary.client.dp_generator import GeneratorConfig, generator_examples, sample_synthetic

    assert control_template(E2E).endswith("\nText: name[") and "name[" not in control_template(YELP)
    [g] = generator_examples(E2E, [Example(text="name[Alimentum], area[city centre]", target=" A place.")])
    assert g.target == "Alimentum], area[city centre]  A place.\n"
    assert generator_examples(YELP, [Example(text="Great tacos.")])[0].target == " Great tacos.\n"
    model, tok = student
    res = sample_synthetic(model, tok, E2E, GeneratorConfig(samples_per_label=3, max_new_tokens=8, min_words=1),
                           seed=0)
    assert res.examples and all(ex.text.startswith("name[") for ex in res.examples)
