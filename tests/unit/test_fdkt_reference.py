"""FDKT as the reference runs it: the eligible-samples judge (prompt, answer parser, per-sample keep/drop), k-means
over all labels with ceil(N/4) clusters, all-labels augmentation prompts and their reply parser, the length filter,
and what clients receive. The LLM is faked (the served model is exercised in tests/e2e/test_fdkt.py)."""

from __future__ import annotations

from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any

import pytest

from estuary.data.datasets import get_task
from estuary.data.task import Example
from estuary.knowledge import (
    AugmentConfig,
    FilterConfig,
    augment_all_labels,
    filter_examples,
    length_filter,
    llm_sample_judge,
)
from estuary.knowledge.fdkt_prompts import (
    all_labels_prompts,
    eligible_messages,
    parse_eligible,
    parse_labelled_lines,
)
from estuary.knowledge.filtering import SampleVerdict
from estuary.serve.types import Completion, Sample

SST2 = get_task("sst2")
POS = ["an utterly delightful film with a great cast", "a moving , beautifully acted story of love",
       "funny , warm and smart from start to finish", "one of the best movies of the year"]
NEG = ["a dull , lifeless mess of a movie", "boring and far too long to sit through",
       "the plot makes no sense and the acting is wooden"]


@pytest.mark.parametrize(("answer", "indexes", "out_of_range"), [
    ("The eligible samples: 0 2 3", (0, 2, 3), 0),
    ("The eligible samples:\n\n3 1 1 0", (0, 1, 3), 0),  # the reference's layout; duplicates count once
    ("the eligible samples are 1-2 and 5.", (1, 2), 1),  # ranges; 5 names no listed sample
    ("The eligible samples: 1 to 3", (1, 2, 3), 0),
    ("The eligible samples: [0, 2]", (0, 2), 0),
    ("Eligible samples: #1, #2", (1, 2), 0),
    ("The eligible samples: samples 0 and 3", (0, 3), 0),
    ("The eligible samples: 0 2\n\nSample 1 is too similar to sample 3.", (0, 2), 0),  # stops at the blank line
    ("The eligible samples: none", (), 0),
    ("None of them fits its label.", (), 0),
    ("The eligible samples: all", (0, 1, 2, 3), 0),
    ("0, 2", (0, 2), 0),  # a bare first line of numbers
    ("The eligible samples: 7 9", (), 2),
    ("0.\nText: an echo of the listing", None, 0),  # a list marker is not an answer
    ("I think they are all good reviews.", None, 0),
    ("The eligible samples: the first and the last", None, 0),
    ("", None, 0),
])
def test_parse_eligible(answer: str, indexes: tuple[int, ...] | None, out_of_range: int) -> None:
    read = parse_eligible(answer, 4)
    assert (read.indexes, read.out_of_range) == (indexes, out_of_range)


def test_eligible_prompt_lists_every_sample_with_its_label_from_zero() -> None:
    messages = eligible_messages(SST2, [(1, POS[0]), (0, NEG[0])])
    assert [m["role"] for m in messages] == ["system", "user"]
    user = messages[1]["content"]
    assert f"0.\nText: {POS[0]}\nLabel: positive.\n" in user and f"1.\nText: {NEG[0]}\nLabel: negative.\n" in user
    assert "The eligible samples:" in user and "no index above 1" in user and SST2.description in user


class FakeLLM:
    """Answers chat prompts: a judge prompt (it lists samples) gets the next of `judge_answers`, an augmentation
    prompt the next of `replies`. Records every call."""

    def __init__(self, judge_answers: Sequence[str] = (), replies: Sequence[str] = (), chat: bool = True) -> None:
        self.judge_answers, self.replies = list(judge_answers), list(replies)
        self.calls: list[tuple[list[Any], Any]] = []
        self.chat = chat

    def info(self) -> dict[str, Any]:
        return {"chat_template": self.chat}

    def generate(self, prompts: Sequence[Any], params: Any = None, adapter: str | None = None,
                 **kwargs: Any) -> list[Completion]:
        self.calls.append((list(prompts), params))
        out = []
        for i, prompt in enumerate(prompts):
            text = prompt if isinstance(prompt, str) else prompt[-1]["content"]
            pool = self.judge_answers if "eligible samples" in text else self.replies
            out.append(Completion(index=i, prompt_tokens=1, samples=[Sample(
                text=pool[i % len(pool)], token_ids=[1], finish_reason="stop")]))
        return out


def _embed(texts: Sequence[str]) -> Any:
    """Unit vectors in two groups, the NEG texts and the others: within a group cosine 0.8 (no near duplicates),
    across 0 (k-means with k = 2 splits the groups)."""
    import numpy as np

    rows = np.zeros((len(texts), 2 + len(texts)), dtype=np.float32)
    for i, t in enumerate(texts):
        rows[i, 1 if t in NEG else 0] = 1.0
        rows[i, 2 + i] = 0.5
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def test_llm_sample_judge_keeps_and_drops_each_sample_and_counts_unreadable_answers() -> None:
    """One cluster of 6 judged in parts of 4 and 2: the first answer keeps samples 0 and 2 of its part, the second
    cannot be read, so its samples are dropped (the reference keeps none) or, with judge_unparsed keep, kept."""
    examples = [Example(text=t, label=1, uid=f"s/{i}") for i, t in enumerate(POS)] + \
        [Example(text=t, label=0, uid=f"s/{4 + i}") for i, t in enumerate(NEG[:2])]
    for unparsed, kept_texts in [("drop", [POS[0], POS[2]]), ("keep", [POS[0], POS[2], NEG[0], NEG[1]])]:
        llm = FakeLLM(["The eligible samples: 0 2 9", "Sure! Here is my analysis of the samples."])
        cfg = FilterConfig(near_duplicate=1.0, samples_per_cluster=100, judge_max_listed=4, judge_unparsed=unparsed)
        res = filter_examples(examples, SST2, cfg, embed=_embed, sample_judge=llm_sample_judge(llm, SST2), seed=0)
        assert [ex.text for ex in res.kept] == kept_texts
        assert res.stats["judge_prompts"] == 2 and res.stats["judge_unparsed"] == 1
        assert res.stats["judge_out_of_range"] == 1  # "9" named no listed sample
        assert res.stats["judged_out"] == 6 - len(kept_texts) and res.stats["kept"] == len(kept_texts)
        first, second = res.clusters
        assert first["kept"] == [True, False, True, False] and first["parsed"] is True
        assert first["labels"] == [1, 1, 1, 1] and first["uids"] == ["s/0", "s/1", "s/2", "s/3"]
        assert second["parsed"] is False and second["kept"] == [unparsed == "keep"] * 2
        assert second["answer"].startswith("Sure!") and {c["scope"] for c in res.clusters} == {"per_sample"}
        prompts, params = llm.calls[0]
        assert len(prompts) == 2 and isinstance(prompts[0], list)  # chat messages: the model has a template
        assert "3.\nText: " + POS[3] in prompts[0][-1]["content"] and params.temperature == 0.0


def test_llm_sample_judge_without_a_chat_template_prompts_plainly_and_reads_the_continuation() -> None:
    llm = FakeLLM([" 1\n"], chat=False)
    verdicts = llm_sample_judge(llm, SST2)([[(1, POS[0]), (1, POS[1])]])
    assert verdicts == [SampleVerdict([False, True], "The eligible samples: 1")]
    prompt = llm.calls[0][0][0]
    assert isinstance(prompt, str) and prompt.endswith("The eligible samples:")


def test_classify_sample_judge_keeps_the_samples_the_llm_labels_as_claimed(monkeypatch: pytest.MonkeyPatch) -> None:
    from estuary.knowledge import llm_eval

    monkeypatch.setattr(llm_eval, "llm_predict", lambda llm, task, examples, adapter=None: [
        1 if "good" in ex.text else 0 for ex in examples])
    judge = llm_sample_judge(object(), SST2, mode="classify")  # type: ignore[arg-type]
    verdicts = judge([[(1, "good one"), (1, "bad two")], [(0, "bad three")]])
    assert [v.keep for v in verdicts] == [[True, False], [True]]
    assert verdicts[0].answer == "LLM labels: positive, negative"


def test_clusters_span_all_labels_ceil_n_over_4_by_default_and_per_label_is_an_option() -> None:
    from estuary.knowledge import TextEmbedder

    embed = TextEmbedder("minilm-l6").embed
    examples = [Example(text=t, label=1) for t in POS] + [Example(text=t, label=0) for t in NEG]
    seen: list[list[tuple[int, str]]] = []

    def judge(groups: Sequence[Sequence[tuple[int, str]]]) -> list[SampleVerdict]:
        seen.extend(list(g) for g in groups)
        return [SampleVerdict([True] * len(g), "all") for g in groups]

    res = filter_examples(examples, SST2, FilterConfig(), embed=embed, sample_judge=judge, seed=0)
    assert len(seen) == 2 and sum(len(g) for g in seen) == 7 and len(res.kept) == 7  # ceil(7 / 4) clusters
    seen.clear()
    per_label = FilterConfig(clustering="per_label", clusters_per_label=1)
    filter_examples(examples, SST2, per_label, embed=embed, sample_judge=judge, seed=0)
    assert sorted(sorted({y for y, _ in g}) for g in seen) == [[0], [1]]


def test_judge_scope_and_mode_must_fit() -> None:
    from estuary import registry
    from estuary.errors import ConfigError

    p = registry.build_params("fdkt", {})
    assert (p.filter.judge_scope, p.filter.judge_mode, p.filter.clustering, p.filter.samples_per_cluster) == (
        "per_sample", "eligible", "all_labels", 4)
    assert (p.augment_prompt, p.filter_augmented, p.augmented_min_words, p.send_raw_synthetic) == (
        "all_labels", "length", 10, False)
    old = registry.build_params("fdkt", {"filter": {"judge_scope": "per_cluster", "judge_mode": "classify",
                                                    "clustering": "per_label"}})
    assert old.filter.judge_scope == "per_cluster"
    with pytest.raises(ConfigError, match="judge_mode eligible does not judge per cluster"):
        registry.build_params("fdkt", {"filter": {"judge_scope": "per_cluster"}})
    with pytest.raises(ConfigError, match="use eligible or classify"):
        registry.build_params("fdkt", {"filter": {"judge_mode": "ask"}})
    with pytest.raises(ValueError, match="needs a judge"):
        filter_examples([Example(text=POS[0], label=1)], SST2, FilterConfig(judge_scope="per_cluster",
                        judge_mode="classify"), embed=_embed, sample_judge=lambda g: [])


def test_all_labels_prompts_show_one_demonstration_of_every_label_and_cycle_through_them() -> None:
    demos = [Example(text=f"great movie number {i}", label=1) for i in range(3)] + [Example(text="bad film", label=0)]
    prompts = all_labels_prompts(SST2, demos, prompts=3, shots_per_label=1, count=8, seed=0)
    assert len(prompts) == 3 and all([m["role"] for m in p] == ["system", "user"] for p in prompts)
    shown = [[ln for ln in p[-1]["content"].splitlines() if ln.startswith(("negative: ", "positive: "))]
             for p in prompts]
    assert all(len(lines) == 2 and lines[0] == "negative: bad film" for lines in shown)  # every label, in order
    assert sorted(lines[1] for lines in shown) == [f"positive: great movie number {i}" for i in range(3)]
    assert "write 8 new examples" in prompts[0][-1]["content"] and "negative, positive" in prompts[0][-1]["content"]
    assert all_labels_prompts(SST2, demos, 3, 1, 8, seed=0) == prompts  # deterministic
    assert all_labels_prompts(SST2, [], 3, 1, 8, seed=0) == []
    only_pos = all_labels_prompts(SST2, demos[:3], 1, 2, 8, seed=0)[0][-1]["content"]
    assert only_pos.count("positive: great") == 2 and "negative: " not in only_pos


def test_parse_labelled_lines_reads_label_text_lines_and_counts_the_rest() -> None:
    reply = ("Here are 4 new examples:\n1. positive: a great film\n- **Negative**: a dull mess\n"
             "neutral: meh, it was fine\nPositive: \"wow, just wow\"\n\n******\nLabel: negative: broken\n"
             "negative:   \n* negative - no colon here\nsentiment: positive: odd but fine")
    samples, bad = parse_labelled_lines(SST2, reply)
    assert samples == [(1, "a great film"), (0, "a dull mess"), (1, "wow, just wow")]
    assert bad == 6  # the preamble, an unknown label, `Label: negative: ...`, an empty text, no colon, `sentiment:`
    yelp = get_task("yelp")
    assert parse_labelled_lines(yelp, "5 stars: the best dentist in town\n2 stars: slow and rude")[0] == [
        (4, "the best dentist in town"), (1, "slow and rude")]


def test_augment_all_labels_asks_for_labelled_samples_in_one_reply_per_prompt() -> None:
    reply = "positive: a lovely little film about growing up\nnegative: a tedious slog\nnot a sample at all"
    llm = FakeLLM(replies=[reply])
    demos = [Example(text="good film here", label=1), Example(text="bad film here", label=0)]
    cfg = AugmentConfig(prompts=3, samples_per_reply=5, max_tokens=40, temperature=0.8)
    out, stats = augment_all_labels(llm, SST2, demos, cfg, seed=2)
    assert stats == {"prompts": 3, "generated": 9, "malformed": 3}
    assert [(ex.label, ex.text) for ex in out[:2]] == [(1, "a lovely little film about growing up"),
                                                        (0, "a tedious slog")]
    assert len({ex.uid for ex in out}) == 6
    params = llm.calls[0][1]
    assert (params.max_tokens, params.n, params.temperature, params.stop) == (200, 1, 0.8, ())
    assert augment_all_labels(llm, SST2, [], cfg, seed=2) == ([], {"prompts": 0, "generated": 0, "malformed": 0})


def test_length_filter_drops_only_short_texts() -> None:
    texts = ["one two three four five six seven eight nine ten", "too short to keep", POS[0], POS[0]]
    res = length_filter([Example(text=t, label=1) for t in texts], 10)
    assert [ex.text for ex in res.kept] == [texts[0]]  # POS[0] has 8 words; duplicates are not this filter's
    assert res.stats["input"] == 4 and res.stats["invalid"] == 3 and res.stats["kept"] == 1


@pytest.mark.parametrize("send_raw", [False, True])
def test_fdkt_server_step_sends_the_augmented_samples_and_raw_ones_only_on_request(send_raw: bool) -> None:
    """The whole server step with a fake LLM: per-sample judge keeps 0 and 1 of every listed group, the
    all-labels replies give two long samples and one short one; clients get the long augmented samples, plus
    the kept DP samples only with send_raw_synthetic."""
    from estuary.platform.loading import load_config
    from estuary.registry import build_params, get

    cfg = load_config("jobs/fdkt-sst2.yaml", [f"method_params.send_raw_synthetic={str(send_raw).lower()}"])
    strategy = get("fdkt")(cfg, build_params("fdkt", cfg.params_of("fdkt")))
    strategy._embed = _embed  # type: ignore[method-assign]
    long_pos = "a warm and clever film that earns every one of its laughs"
    long_neg = "a tired and clumsy film that wastes every one of its good actors"
    llm = FakeLLM(["The eligible samples: 0 1"], [f"positive: {long_pos}\nnegative: {long_neg}\npositive: short"])
    records: dict[str, list[dict[str, Any]]] = {}
    server = SimpleNamespace(task=SST2, llm=llm, log=print,
                             record=lambda name, rows: records.setdefault(name, []).extend(rows))
    synthetic = [Example(text=t, label=1, uid=f"synthetic/c000/r1/1/{i}") for i, t in enumerate(POS)] + \
        [Example(text=t, label=0, uid=f"synthetic/c001/r1/0/{i}") for i, t in enumerate(NEG)]
    metrics = strategy.server_step(1, {"synthetic": synthetic, "refused": []}, server)  # type: ignore[arg-type]
    kept = [r for r in records["synthetic"] if r["kept"]]
    assert metrics["filter/synthetic/judge_prompts"] == 2 == len(records["clusters"])  # ceil(7 / 4) clusters
    assert len(kept) == metrics["filter/synthetic/kept"] == 4 and metrics["filter/augmented/invalid"] > 0
    augmented = {ex.text for ex in strategy._transfer if ex.uid.startswith("augmented/")}
    assert augmented == {long_pos, long_neg} and metrics["augment/prompts"] == strategy.params.augment.prompts
    raw = [ex for ex in strategy._transfer if ex.uid.startswith("synthetic/")]
    assert len(raw) == (4 if send_raw else 0)
    assert metrics["transfer/examples"] == len(strategy._transfer)
