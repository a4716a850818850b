"""FDKT as the reference runs it: the eligible-samples judge prompt and its answer parser, the all-labels
augmentation prompts and their reply parser."""

from __future__ import annotations

import pytest

from estuary.data.datasets import get_task
from estuary.data.task import Example
from estuary.knowledge.fdkt_prompts import (
    all_labels_prompts,
    eligible_messages,
    parse_eligible,
    parse_labelled_lines,
)

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
