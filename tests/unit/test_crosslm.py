"""CrossLM: the score calibration (a label-skewed client corrected for its own label prior) and the LLM read as a
noisy-channel classifier."""

from __future__ import annotations

import numpy as np
import pytest

from estuary import registry
from estuary.errors import ConfigError
from estuary.strategies.crosslm import calibrate


def test_calibration_divides_out_the_clients_label_prior() -> None:
    # a client that leans to label 0: its mean prediction over the four samples is (0.86, 0.14)
    probs = np.array([[0.9, 0.1], [0.95, 0.05], [0.6, 0.4], [0.99, 0.01]])
    adjusted, prior = calibrate(probs, [0, 0, 1, 1])
    assert prior == pytest.approx([0.86, 0.14])
    # p'(y|x) ∝ p(y|x) · 0.5 / π(y): sample 2 → 0.4·0.5/0.14 = 1.4286 against 0.6·0.5/0.86 = 0.3488
    assert adjusted[2, 1] == pytest.approx(1.4286 / (1.4286 + 0.3488), abs=1e-4)  # 0.804: now agrees
    assert adjusted[3, 1] == pytest.approx(0.0357 / (0.0357 + 0.5756), abs=1e-3)  # 0.058: still rejected
    assert adjusted[0, 0] == pytest.approx(0.5233 / (0.5233 + 0.3571), abs=1e-4)
    assert np.allclose(adjusted.sum(axis=1), 1.0)
    # an unbiased client on a balanced batch is left as it is
    fair = np.array([[0.8, 0.2], [0.2, 0.8]])
    assert np.allclose(calibrate(fair, [0, 1])[0], fair)


def test_calibration_is_a_checked_choice() -> None:
    assert registry.build_params("crosslm", {}).calibration == "prior"
    assert registry.build_params("crosslm", {"calibration": "none"}).calibration == "none"
    with pytest.raises(ConfigError, match="calibration must be one of prior, none .got 'platt'"):
        registry.build_params("crosslm", {"calibration": "platt"})


class _CharLM:
    """A served-LLM stand-in for `llm_eval`: one token per character, each −1 nats, except that the text after
    a prompt naming a label is a little likelier when it holds that label's cue word (−0.97 a character: over
    a whole text, less than one prompt character)."""

    cues = {"World": "election", "Sports": "goal", "Business": "shares", "Sci/Tech": "software"}

    def topk_logprobs(self, texts: list[str], k: int = 1, adapter: str | None = None) -> object:
        from types import SimpleNamespace

        items = []
        for t in texts:
            head, _, body = t.rpartition("Text:")
            named = [lab for lab in self.cues if f'"{lab}"' in head]
            liked = bool(named) and self.cues[named[0]] in body
            n_head = len(head) + len("Text:") if head else 0
            lps = [-1.0] * n_head + [-0.97 if liked else -1.0] * (len(t) - n_head)
            items.append(SimpleNamespace(token_ids=list(range(len(t))), token_logprobs=[None, *lps[1:]]))
        return SimpleNamespace(texts=items)


def test_channel_rule_picks_the_label_whose_generation_prompt_makes_the_text_likeliest() -> None:
    from estuary.data.datasets import get_task
    from estuary.data.task import Example
    from estuary.knowledge.llm_eval import llm_classify, llm_predict

    task = get_task("agnews")
    assert task.label_names == ("World", "Sports", "Business", "Sci/Tech")
    examples = [Example(text=t, label=y) for t, y in [("a late goal wins the cup", 1), ("new software ships", 3),
                                                      ("shares fall again", 2), ("the election is close", 0),
                                                      ("the goal of the election", 1)]]
    # only the text's own tokens count: the four prompts differ in length (a whole-sequence sum would pick the
    # shortest prompt's label for every text); a tie goes to the lowest label (the last text)
    assert llm_predict(_CharLM(), task, examples, rule="channel", batch=4) == [1, 3, 2, 0, 0]
    res = llm_classify(_CharLM(), task, examples, rule="channel")
    assert res["accuracy"] == pytest.approx(0.8) and res["n"] == 5
    with pytest.raises(ValueError, match="rule must be direct or channel"):
        llm_predict(_CharLM(), task, examples, rule="noisy")
    assert registry.build_params("crosslm", {}).llm_channel_eval is True


@pytest.mark.parametrize("llm_continue", [False, True])
def test_llm_trains_fresh_on_the_pool_or_continues_the_live_version_on_the_rounds_selection(
        monkeypatch: pytest.MonkeyPatch, llm_continue: bool) -> None:
    """Fresh (default): every round's adapter starts anew on every sample selected so far. llm_continue: round 1
    starts anew, later rounds continue the live version on their own selection only (the pool is already in it)."""
    from types import SimpleNamespace

    from estuary.data.datasets import get_task
    from estuary.data.task import Example
    from estuary.platform.loading import load_config
    from estuary.registry import build_params, get
    from estuary.strategies import crosslm

    cfg = load_config("jobs/crosslm-sst2.yaml", [f"method_params.llm_continue={str(llm_continue).lower()}"])
    strategy = get("crosslm")(cfg, build_params("crosslm", cfg.params_of("crosslm")))
    calls: list[dict] = []

    def fake_train(strat, rnd, server, records, config, what, start=None):  # type: ignore[no-untyped-def]
        calls.append({"records": records, "start": start, "seed": config["seed"], "what": what})
        return f"crosslm@v{rnd}", {"records": float(len(records))}

    monkeypatch.setattr(crosslm, "train_server_adapter", fake_train)
    server = SimpleNamespace(task=get_task("sst2"))
    for rnd, texts in [(1, ["a fine film", "dull"]), (2, ["a joy"])]:
        strategy._selected = [Example(text=t, label=i % 2) for i, t in enumerate(texts)]
        strategy._pool += [[ex.text, ex.label] for ex in strategy._selected]
        strategy.version, _ = strategy._train_llm(rnd, server)  # type: ignore[arg-type]
    first, second = ([r["completion"] for r in c["records"] if r["prompt"].endswith("Text:")] for c in calls)
    assert first == [" a fine film\n", " dull\n"] and calls[0]["start"] is None
    # task records by default (the paper trains the LLM on the selected data): the same samples, prompt → label
    tasks = [(r["prompt"], r["completion"]) for r in calls[0]["records"] if not r["prompt"].endswith("Text:")]
    assert tasks == [("Review: a fine film\nSentiment:", " negative"), ("Review: dull\nSentiment:", " positive")]
    assert calls[1]["seed"] == cfg.seed + 2
    if llm_continue:
        assert second == [" a joy\n"] and calls[1]["start"] == "crosslm@v1" and calls[1]["what"] == "continued"
    else:
        assert second == [" a fine film\n", " dull\n", " a joy\n"] and calls[1]["start"] is None
    assert registry.build_params("crosslm", {}).llm_continue is False


def test_llm_task_records_are_the_default_and_generation_only_is_an_option(monkeypatch: pytest.MonkeyPatch) -> None:
    """The paper trains both sides on the selected data: the LLM gets every selected sample as a generation record
    (label prompt → sample) and as a task record (task prompt → label word); llm_task_records=false is the old
    generation-only setting."""
    from types import SimpleNamespace

    from estuary.data.datasets import get_task
    from estuary.data.task import Example
    from estuary.knowledge.prompts import generation_prompt
    from estuary.platform.loading import load_config
    from estuary.registry import build_params, get
    from estuary.strategies import crosslm

    assert registry.build_params("crosslm", {}).llm_task_records is True
    sst2 = get_task("sst2")
    for setting, expected in [([], 4), (["method_params.llm_task_records=false"], 2)]:
        cfg = load_config("jobs/crosslm-sst2.yaml", setting)
        strategy = get("crosslm")(cfg, build_params("crosslm", cfg.params_of("crosslm")))
        seen: list[list[dict]] = []

        def fake_train(strat, rnd, server, records, config, what, start=None, seen=seen):  # type: ignore[no-untyped-def]
            seen.append(records)
            return "crosslm@v1", {}

        monkeypatch.setattr(crosslm, "train_server_adapter", fake_train)
        strategy._selected = [Example(text="a joy to watch", label=1), Example(text="a chore", label=0)]
        strategy._pool = [[ex.text, ex.label] for ex in strategy._selected]
        strategy._train_llm(1, SimpleNamespace(task=sst2))  # type: ignore[arg-type]
        assert len(seen[0]) == expected
        assert seen[0][:2] == [{"prompt": generation_prompt(sst2, 1), "completion": " a joy to watch\n"},
                               {"prompt": generation_prompt(sst2, 0), "completion": " a chore\n"}]
        if expected == 4:
            assert seen[0][2:] == [{"prompt": "Review: a joy to watch\nSentiment:", "completion": " positive"},
                                   {"prompt": "Review: a chore\nSentiment:", "completion": " negative"}]

