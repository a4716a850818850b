"""ClientContext: what a strategy's `client_step` sees inside a worker.

It binds one client's state and private data to the worker's loaded model, and offers the
operations methods are built from (local training, evaluation, an Egress to return).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from estuary.data.federated import ClientData
from estuary.data.task import Example, Task
from estuary.wire import ClientState, Egress

if TYPE_CHECKING:
    from estuary.client.dp_generator import GeneratorConfig
    from estuary.client.dp_ops import SyntheticResult
    from estuary.config import ExperimentConfig
    from estuary.lm.loop import TrainResult
    from estuary.privacy.dp_sgd import DPTrainResult
    from estuary.privacy.ledger import LedgerEntry
    from estuary.wire import ClientTask


def derive_seed(*parts: object) -> int:
    """A stable 31-bit seed from any parts (run seed, client id, round, purpose)."""
    digest = hashlib.sha256("/".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


class ClientContext:
    def __init__(
        self,
        *,
        exp: ExperimentConfig,
        state: ClientState,
        bind: Callable[[], tuple[Any, Any]],
        task: Task | None = None,
        data: ClientData | None = None,
        test: tuple[Example, ...] = (),
        worker: str,
        strategy: str,
        load: Callable[[str], tuple[Any, Any]] | None = None,
        shard: Callable[[], tuple[Task, ClientData, tuple[Example, ...]]] | None = None,
    ) -> None:
        """`task`, `data` (the client's private shard) and `test`, or `shard`, which returns them on first use (a
        step that never looks at the data, e.g. `noop`'s, never builds it)."""
        if shard is None and (task is None or data is None):
            raise TypeError("ClientContext needs task and data, or shard")
        self.exp = exp
        self.state = state
        self._bind = bind
        self._bound: tuple[Any, Any] | None = None
        self._task, self._data, self._test = task, data, test
        self._shard = shard
        self.worker = worker
        self.strategy = strategy
        self.trained = False  # set when the adapter changed and must be written back to the state
        self.privacy_rows: list[LedgerEntry] = []  # ledger entries of this task, sent on the Egress
        self._load = load  # model spec → the worker's (model with LoRA, tokenizer), e.g. a DP generator model

    def _shard_parts(self) -> tuple[Task, ClientData, tuple[Example, ...]]:
        if self._task is None or self._data is None:
            assert self._shard is not None
            self._task, self._data, self._test = self._shard()
        return self._task, self._data, self._test

    @property
    def task(self) -> Task:
        return self._shard_parts()[0]

    @property
    def data(self) -> ClientData:
        return self._shard_parts()[1]

    @property
    def test(self) -> tuple[Example, ...]:
        return self._shard_parts()[2]

    def _model_and_tokenizer(self) -> tuple[Any, Any]:
        """The worker's base model with this client's adapter swapped in, on first use only."""
        if self._bound is None:
            self._bound = self._bind()
        return self._bound

    @property
    def model(self) -> Any:
        return self._model_and_tokenizer()[0]

    @property
    def tokenizer(self) -> Any:
        return self._model_and_tokenizer()[1]

    def model_for(self, spec: str | None) -> tuple[Any, Any]:
        """(model, tokenizer) of another model the worker holds (None: this client's own SLM). Its adapter
        is whatever the last user left: load one before use."""
        if spec is None or spec == self.state.model:
            return self._model_and_tokenizer()
        if self._load is None:
            raise RuntimeError(f"this client context cannot load model {spec!r} (no loader given)")
        return self._load(spec)

    @property
    def client_id(self) -> str:
        return self.state.client_id

    @property
    def train(self) -> tuple[Example, ...]:
        return self.data.train

    def seed(self, rnd: int, purpose: str) -> int:
        return derive_seed(self.exp.seed, self.strategy, self.client_id, rnd, purpose)

    def train_steps(
        self, rnd: int, *, steps: int | None = None, examples: tuple[Example, ...] | list[Example] | None = None
    ) -> TrainResult:
        """Local LoRA training on the client's private data (or given examples), state carried over."""
        from estuary.lm.loop import train_steps

        tr = self.exp.training
        n_steps = tr.steps if steps is None else steps
        result = train_steps(
            self.model,
            self.tokenizer,
            self.task,
            list(self.train if examples is None else examples),
            steps=n_steps,
            batch_size=tr.batch_size,
            lr=tr.lr,
            max_length=tr.max_length,
            seed=self.seed(rnd, "train"),
            optimizer_state=self.state.optimizer if tr.keep_optimizer_state else None,
            weight_decay=tr.weight_decay,
        )
        self.state.optimizer = result.optimizer_state if tr.keep_optimizer_state else None
        self.state.steps_trained += n_steps
        self.state.rounds_trained += 1
        self.trained = True
        return result

    def dp_train_steps(self, rnd: int, **kwargs: Any) -> DPTrainResult:
        """DP-SGD on the client's private data, charged to its ledger (`state.privacy`); a refusal is
        returned, not raised (see `estuary.client.dp_ops.client_dp_train` for the arguments)."""
        from estuary.client.dp_ops import client_dp_train

        return client_dp_train(self, rnd, **kwargs)

    def dp_synthesize(self, rnd: int, gen_cfg: GeneratorConfig | None = None, **kwargs: Any) -> SyntheticResult:
        """Labelled synthetic examples from the client's DP generator (trained on first use; see
        `estuary.client.dp_ops.client_dp_synthesize`)."""
        from estuary.client.dp_ops import client_dp_synthesize

        return client_dp_synthesize(self, rnd, gen_cfg, **kwargs)

    def evaluate_split(self, examples: tuple[Example, ...] | list[Example]) -> dict[str, float]:
        from estuary.lm.scoring import evaluate

        ev = self.exp.evaluation
        return evaluate(
            self.model,
            self.tokenizer,
            self.task,
            list(examples),
            batch_size=ev.batch_size,
            max_length=self.exp.training.max_length,
        )

    def evaluate(self, task: ClientTask) -> dict[str, float]:
        """Metrics on the client's own eval split, and on the global test split when configured."""
        out = {f"eval/{k}": v for k, v in self.evaluate_split(self.data.eval).items() if k != "n"}
        if self.exp.evaluation.global_test and task.params.get("global_test", True):
            out.update({f"test/{k}": v for k, v in self.evaluate_split(self.test).items() if k != "n"})
        return out

    def egress(self, task: ClientTask, **fields: Any) -> Egress:
        fields.setdefault("privacy", list(self.privacy_rows))
        return Egress(client_id=self.client_id, round=task.round, strategy=self.strategy, worker=self.worker, **fields)
