"""How many clients' tasks go in one call to a pooled worker (estuary.client.batching.CallSizer)."""

from __future__ import annotations

from estuary.client.batching import CallSizer


def test_one_task_per_call_until_its_kind_is_timed() -> None:
    sizer = CallSizer()
    assert sizer.size("noop", "train", 500, 4) == 1
    sizer.observe("noop", "eval", 0.0001)
    assert sizer.size("noop", "train", 500, 4) == 1  # another kind's time says nothing of this one


def test_cheap_tasks_fill_an_even_share_and_slow_ones_go_alone() -> None:
    sizer = CallSizer(target_s=0.05)
    sizer.observe("noop", "train", 0.0001)
    assert sizer.size("noop", "train", 500, 4) == 125  # capped by the share: every call slot gets work
    assert sizer.size("noop", "train", 1, 4) == 1
    sizer.observe("standalone", "train", 2.0)
    assert sizer.size("standalone", "train", 500, 4) == 1
    sizer.observe("fast", "train", 0.01)
    assert sizer.size("fast", "train", 500, 4) == 5  # 5 × 10 ms ≈ the 50 ms target


def test_running_mean_follows_the_newest_times_and_a_fixed_setting_wins() -> None:
    sizer = CallSizer(target_s=0.05)
    sizer.observe("m", "train", 0.001)
    for _ in range(30):
        sizer.observe("m", "train", 1.0)  # the tasks became slow: back to one per call
    assert sizer.size("m", "train", 100, 4) == 1
    fixed = CallSizer(setting=8)
    assert fixed.size("m", "train", 100, 4) == 8 and fixed.size("m", "train", 3, 4) == 3
