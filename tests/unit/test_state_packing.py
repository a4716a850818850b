"""A ClientState pickles its CPU tensors packed in one contiguous array (what Ray moves between driver and workers)
and unpickles them as writable views of one buffer, equal to what went in."""

from __future__ import annotations

import pickle
from collections import OrderedDict, defaultdict, namedtuple

import numpy as np
import torch

from estuary.wire import ClientState

Pair = namedtuple("Pair", "w n")  # module level: picklable


def _state() -> ClientState:
    g = torch.Generator().manual_seed(0)
    adapter = {"a.lora_A": torch.randn(8, 16, generator=g), "a.lora_B": torch.randn(16, 8, generator=g).bfloat16(),
               "odd": torch.randn(3, generator=g).half(), "empty": torch.zeros(0, 4)}
    optimizer = {"state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.randn(8, 16, generator=g)}},
                 "param_groups": [{"lr": 1e-3, "params": [0]}]}
    return ClientState("c007", "m", adapter=adapter, optimizer=optimizer, rounds_trained=2,
                       extra={"payload": torch.arange(5), "note": "kept", "pair": (torch.ones(2), 1)})


def test_tensors_travel_in_one_array_and_come_back_equal_and_writable() -> None:
    state = _state()
    packed = state.__getstate__()
    assert isinstance(packed["_packed"][0], np.ndarray) and len(packed["_packed"][1]) == 8  # every tensor, one array
    back = pickle.loads(pickle.dumps(state, protocol=5))
    assert back.client_id == "c007" and back.rounds_trained == 2 and back.extra["note"] == "kept"
    for k, t in state.adapter.items():  # type: ignore[union-attr]
        assert back.adapter[k].dtype == t.dtype and back.adapter[k].shape == t.shape  # type: ignore[index]
        assert torch.equal(back.adapter[k], t)  # type: ignore[index]
    step = back.optimizer["state"][0]["step"]  # type: ignore[index]
    assert step.shape == () and float(step) == 3.0
    assert back.optimizer["param_groups"] == state.optimizer["param_groups"]  # type: ignore[index]
    assert torch.equal(back.extra["payload"], torch.arange(5)) and back.extra["pair"][1] == 1
    back.optimizer["state"][0]["exp_avg"].add_(1.0)  # type: ignore[index]  # AdamW updates it in place
    assert not torch.equal(back.optimizer["state"][0]["exp_avg"],  # type: ignore[index]
                           state.optimizer["state"][0]["exp_avg"])  # type: ignore[index]


def test_a_read_only_array_is_copied_before_use() -> None:
    packed = _state().__getstate__()
    array, specs = packed["_packed"]
    array.flags.writeable = False  # as an array read zero-copy from Ray's object store
    packed["_packed"] = (array, specs)
    back = ClientState.__new__(ClientState)
    back.__setstate__(packed)
    back.adapter["a.lora_A"].mul_(2.0)  # type: ignore[index]
    assert torch.equal(back.adapter["a.lora_A"], 2 * _state().adapter["a.lora_A"])  # type: ignore[index]


def test_a_state_without_tensors_pickles_as_before() -> None:
    plain = ClientState("c001", "m", rounds_trained=1, extra={"n": 3})
    assert "_packed" not in plain.__getstate__()
    assert pickle.loads(pickle.dumps(plain)) == plain


def test_containers_it_cannot_rebuild_keep_their_tensors_and_type() -> None:
    extra = {"by": defaultdict(list, {"a": [torch.ones(2)]}), "pair": Pair(torch.zeros(3), 4),
             "ordered": OrderedDict(x=torch.arange(3))}
    back = pickle.loads(pickle.dumps(ClientState("c002", "m", extra=extra), protocol=5))
    assert isinstance(back.extra["by"], defaultdict) and torch.equal(back.extra["by"]["a"][0], torch.ones(2))
    assert isinstance(back.extra["pair"], Pair) and back.extra["pair"].n == 4
    assert isinstance(back.extra["ordered"], OrderedDict) and torch.equal(back.extra["ordered"]["x"], torch.arange(3))
