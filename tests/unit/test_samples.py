"""DP generator samples of a user's generation task card: written as the card's template on one line, split back on
it (DistilDP's `synthetic_example`); E2E keeps its own `sample_pattern`; a card whose samples cannot split is
refused by DistilDP in one line."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from estuary.client.dp_generator import generator_examples
from estuary.data import get_task
from estuary.data.card import TaskCard
from estuary.data.samples import layout_misfit, parse_sample, sample_text
from estuary.data.task import Example
from estuary.strategies.distildp import DistilDP
from estuary.strategies.distildp_client import synthetic_example


def _card(**over: Any) -> TaskCard:
    spec: dict[str, Any] = {
        "name": "medqa", "kind": "generation", "source": {"path": "medqa.jsonl"},
        "columns": {"text": "question", "text_pair": "context", "target": "long_answer"},
        "template": "Context: {text_pair}\nQuestion: {text}\nAnswer:",
    }
    spec.update(over)
    return TaskCard.model_validate(spec)


def test_user_card_sample_round_trips_through_its_template() -> None:
    task = _card().to_task()
    assert task.targets
    ex = Example(text="Does aspirin help?", text_pair="A trial of 40 patients\nshowed fewer strokes.",
                 target=" Yes, it lowered the stroke rate.", uid="medqa/train/0")
    line = sample_text(task, ex)
    assert "\n" not in line  # the generator writes one line per sample
    assert line == ("Context: A trial of 40 patients showed fewer strokes. Question: Does aspirin help? "
                    "Answer: Yes, it lowered the stroke rate.")
    (learnt,) = generator_examples(task, [ex])
    assert learnt.target == " " + line + "\n"
    got = synthetic_example(task, line, "synthetic/0/0")
    assert got == Example(text="Does aspirin help?", text_pair="A trial of 40 patients showed fewer strokes.",
                          target=" Yes, it lowered the stroke rate.", uid="synthetic/0/0")
    assert task.prompt(got).endswith("Question: Does aspirin help?\nAnswer:")  # the student's prompt, as the card's


@pytest.mark.parametrize("bad", ["Context: x Question: y", "Question: y Answer: z", "Context: x Question: y Answer:",
                                 "just some text"])
def test_user_card_sample_that_does_not_split_is_dropped(bad: str) -> None:
    assert synthetic_example(_card().to_task(), bad, "u") is None


def test_single_text_card_and_free_text() -> None:
    task = _card(columns={"text": "q", "target": "a"}, template="Q: {text} A:").to_task()
    assert synthetic_example(task, "Q: what is 2+2? A: four", "u") == Example(text="what is 2+2?", target=" four",
                                                                           uid="u")
    free = _card(columns={"text": "review"}, template="{text}").to_task()
    assert not free.targets and layout_misfit(free) is None
    assert synthetic_example(free, "Great tacos.", "u") == Example(text="Great tacos.", uid="u")


def test_e2e_keeps_its_layout() -> None:
    e2e = get_task("e2e")
    ex = Example(text="name[The Eagle], eatType[pub]", target=" The Eagle is a pub.")
    assert sample_text(e2e, ex) == "name[The Eagle], eatType[pub]  The Eagle is a pub."
    assert parse_sample(e2e, "name[The Eagle], eatType[pub] The Eagle is a pub.", "u") == Example(
        text="name[The Eagle], eatType[pub]", target=" The Eagle is a pub.", uid="u")


def test_distildp_refuses_cards_whose_samples_cannot_split() -> None:
    assert DistilDP.task_misfit(_card().to_task()) is None
    joined = _card(columns={"text": "q", "target": "a"}, template="{text}").to_task()
    assert "template ends with a field" in (DistilDP.task_misfit(joined) or "")
    marker = _card(columns={"text": "q", "target": "a"}, template="Text: {text}\nSummary:").to_task()
    assert "'Text:'" in (DistilDP.task_misfit(marker) or "")


def test_sample_pattern_is_checked() -> None:
    with pytest.raises(ValidationError, match="name its two parts"):
        _card(sample_pattern=r"(.*) (.*)")
    with pytest.raises(ValidationError, match="not a regular expression"):
        _card(sample_pattern=r"(?P<text>[")
    task = _card(columns={"text": "q", "target": "a"}, template="{text}",
                 sample_pattern=r"^(?P<text>.+?) => (?P<target>.+)$").to_task()
    assert layout_misfit(task) is None
    assert parse_sample(task, "two plus two => four", "u") == Example(text="two plus two", target=" four", uid="u")
