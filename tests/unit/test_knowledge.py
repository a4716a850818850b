"""Server-side knowledge processing: prompts, filters (real MiniLM embeddings), LLM data plumbing."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest

from estuary.data.datasets import get_task
from estuary.data.task import Example
from estuary.knowledge import FilterConfig, GenerateConfig, TextEmbedder, augment, filter_examples, llm_judge
from estuary.knowledge.prompts import augmentation_prompts, parse_sample, parse_verdict
from estuary.serve.types import Completion, Sample

SST2 = get_task("sst2")


@pytest.fixture(scope="module")
def embedder() -> TextEmbedder:
    return TextEmbedder("minilm-l6")


def test_embeddings_are_unit_and_semantic(embedder: TextEmbedder) -> None:
    emb = embedder.embed(["a wonderful , moving film", "a truly wonderful and moving movie", "the stock market fell"])
    assert emb.shape == (3, 384)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    assert emb[0] @ emb[1] > emb[0] @ emb[2] + 0.3
    assert embedder.embed([]).shape == (0, 384)


def test_parse_helpers() -> None:
    assert parse_sample(' "a fine film" \nText: next') == "a fine film"
    assert parse_sample("Label: positive") == ""
    assert parse_verdict(" Yes, they do.") is True
    assert parse_verdict("no") is False
    assert parse_verdict("Maybe") is None and parse_verdict("") is None


def test_augmentation_prompts_share_prefix() -> None:
    demos = [Example(text=f"great movie number {i}", label=1) for i in range(6)] + [Example(text="bad", label=0)]
    prompts = augmentation_prompts(SST2, demos, 1, count=5, shots=4, seed=0)
    assert len(prompts) == 5 and all(p.endswith("Text:") for p in prompts)
    shared = prompts[0][: prompts[0].rindex("Text: ", 0, len(prompts[0]) - 6)]
    assert all(p.startswith(shared) for p in prompts) and shared.count("Text: ") == 3
    assert "bad" not in "".join(prompts) and '"positive"' in prompts[0]
    assert augmentation_prompts(SST2, demos, 1, 5, 4, seed=0) == prompts  # deterministic
    assert augmentation_prompts(SST2, [], 1, 5, 4, seed=0) == []


def test_filter_counts_every_stage(embedder: TextEmbedder) -> None:
    pos = ["an utterly delightful film with a great cast", "a moving , beautifully acted story of love",
           "funny , warm and smart from start to finish", "one of the best movies of the year"]
    neg = ["a dull , lifeless mess of a movie", "boring and far too long to sit through",
           "the plot makes no sense and the acting is wooden"]
    examples = ([Example(text=t, label=1) for t in pos] + [Example(text=t, label=0) for t in neg]
                + [Example(text="An utterly delightful film, with a great cast!", label=1),  # folded duplicate
                   Example(text="an utterly delightful film with a great cast indeed", label=1),  # near duplicate
                   Example(text="ok", label=0), Example(text="", label=1)])  # invalid
    judged: list[tuple[int, list[str]]] = []

    def judge(clusters: Sequence[tuple[int, list[str]]]) -> list[tuple[bool | None, str]]:
        judged.extend(clusters)
        return [(label == 1, "Yes" if label == 1 else "No") for label, _ in clusters]

    cfg = FilterConfig(near_duplicate=0.9, clustering="per_label", clusters_per_label=2, judge_examples=2,
                       judge_scope="per_cluster", judge_mode="ask")  # the per-cluster options
    res = filter_examples(examples, SST2, cfg, embed=embedder.embed, judge=judge, seed=0)
    assert res.stats == {"input": 11, "invalid": 2, "duplicate": 1, "near_duplicate": 1, "judged_out": 3, "kept": 4,
                         "judge_prompts": 0, "judge_unparsed": 0, "judge_out_of_range": 0}
    assert sorted(e.text for e in res.kept) == sorted(pos)
    assert len(judged) == 4 and all(len(texts) <= 2 for _, texts in judged)
    assert sum(c["size"] for c in res.clusters) == 7 and {c["kept"] for c in res.clusters} == {True, False}
    # the reference set (e.g. the demonstrations) counts as already kept
    res2 = filter_examples([Example(text=pos[0], label=1)], SST2, cfg, embed=embedder.embed, reference=[pos[0]])
    assert res2.stats["duplicate"] == 1 and res2.kept == []


class FakeLLM:
    """Engine stand-in for plumbing tests (the real served model is exercised in the serve and e2e tests)."""

    def __init__(self, answers: list[str]) -> None:
        self.answers = answers
        self.calls: list[tuple[list[Any], Any]] = []

    def generate(self, prompts: Sequence[Any], params: Any = None, adapter: str | None = None,
                 **kwargs: Any) -> list[Completion]:
        self.calls.append((list(prompts), params))
        n = params.n
        return [Completion(index=i, prompt_tokens=1,
                           samples=[Sample(text=self.answers[(i * n + j) % len(self.answers)], token_ids=[1],
                                           finish_reason="stop") for j in range(n)])
                for i in range(len(prompts))]


def test_augment_and_judge_plumbing() -> None:
    llm = FakeLLM([" a brand new sample text", "Label: broken"])
    demos = [Example(text="good film here", label=1), Example(text="bad film here", label=0)]
    out, stats = augment(llm, SST2, demos, GenerateConfig(prompts_per_label=3, samples_per_prompt=2), seed=1)
    assert stats == {"prompts": 6, "generated": 12, "malformed": 6}
    assert len(out) == 6 and {e.label for e in out} == {0, 1} and out[0].text == "a brand new sample text"
    assert llm.calls[0][1].stop == ("\n",) and llm.calls[0][1].n == 2
    judge = llm_judge(FakeLLM(["Yes", "no.", "perhaps"]), SST2, mode="ask")
    assert [v for v, _ in judge([(0, ["a"]), (1, ["b"]), (1, ["c"])])] == [True, False, None]


class ScoringLLM:
    """topk_logprobs stand-in: a text ending in a label word scores 0 if the text mentions that word's
    sentiment cue ("good" → positive, "bad" → negative), -5 otherwise (one token per word)."""

    def topk_logprobs(self, texts: list[str], k: int, adapter: str | None = None) -> Any:
        from types import SimpleNamespace

        items = []
        for t in texts:
            words = t.split()
            lps: list[float | None] = [None] + [0.0] * (len(words) - 1)
            last = words[-1]
            if last in ("negative", "positive"):
                cue = "good" if last == "positive" else "bad"
                lps[-1] = 0.0 if cue in t else -5.0
            items.append(SimpleNamespace(token_ids=list(range(len(words))), token_logprobs=lps))
        return SimpleNamespace(texts=items)


def test_classify_judge_keeps_clusters_the_llm_labels_as_claimed() -> None:
    judge = llm_judge(ScoringLLM(), SST2, agreement=0.6)  # classify is the default mode
    verdicts = judge([(1, ["good one", "good two", "bad three"]), (1, ["bad a", "bad b", "good c"]),
                      (0, ["bad x", "bad y"])])
    assert [v for v, _ in verdicts] == [True, False, True]
    assert verdicts[1][1] == "1/3 labelled positive by the LLM"
    with pytest.raises(ValueError, match="classification"):
        llm_judge(ScoringLLM(), get_task("e2e"))


def test_classify_judge_tolerance_accepts_neighbouring_ordinal_labels(monkeypatch: pytest.MonkeyPatch) -> None:
    """Star ratings are ordinal: with tolerance 1 a 3-star cluster the LLM reads as 2 and 4 stars passes; a
    1-star cluster read as 4 and 5 stars still fails. Tolerance 0 is the exact-label judge."""
    from estuary import registry
    from estuary.errors import ConfigError
    from estuary.knowledge import llm_eval

    yelp = get_task("yelp")
    assert yelp.num_labels == 5
    reads = {"meh": 1, "fine": 3, "ok": 2, "awful?": 4, "great": 4, "superb": 4}  # the LLM's label per text
    monkeypatch.setattr(llm_eval, "llm_predict", lambda llm, task, examples, adapter=None: [
        reads[ex.text] for ex in examples])
    clusters = [(2, ["meh", "fine", "ok"]), (0, ["awful?", "great", "superb"])]
    strict = llm_judge(object(), yelp)(clusters)  # type: ignore[arg-type]
    assert [v for v, _ in strict] == [False, False] and strict[0][1].startswith("1/3 labelled")
    loose = llm_judge(object(), yelp, tolerance=1)(clusters)  # type: ignore[arg-type]
    assert [v for v, _ in loose] == [True, False]
    assert loose[0][1].endswith("or within 1 by the LLM") and loose[0][1].startswith("3/3")
    assert registry.build_params("fdkt", {"filter": {"judge_tolerance": 1}}).filter.judge_tolerance == 1
    with pytest.raises(ConfigError, match="judge_tolerance must be >= 0"):
        registry.build_params("fdkt", {"filter": {"judge_tolerance": -1}})
