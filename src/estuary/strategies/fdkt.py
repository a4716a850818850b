"""FDKT (Li et al. 2024, arXiv 2405.14212): federated domain-specific knowledge transfer, LLM → SLMs.

Each round has two client phases around the server step:

1. `synthesize` (clients): each client DP-fine-tunes a generator adapter on its private data (once; later
   rounds sample the same DP model, which costs no further ε) and samples labelled synthetic examples.
   Only these leave the client, on the Egress with their ledger "release" entry.
2. server: the synthetic samples are filtered (validity, duplicates, k-means clusters over all labels; the
   LLM sees each cluster's samples with their labels and keeps or drops each one); the kept ones become
   demonstrations of augmentation prompts that show every label, and the served LLM writes and labels new
   samples; those under 10 words are dropped (`docs/methods.md`: the reference procedure step by step,
   and each option that departs from it).
3. `train` (clients): each client fine-tunes its SLM (LoRA) on its private data plus the augmented data
   (with `send_raw_synthetic`, also the kept synthetic samples), then is evaluated.

Everything the clients sent and the server kept is in the run folder: knowledge/synthetic.jsonl,
knowledge/augmented.jsonl, knowledge/clusters.jsonl.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, ClassVar

from estuary.client.context import derive_seed
from estuary.data.task import Example
from estuary.platform.strategy import Strategy
from estuary.registry import register
from estuary.strategies.dp_baselines import privacy_metrics
from estuary.strategies.fdkt_config import FDKTConfig
from estuary.strategies.transfer import train_on_transfer
from estuary.wire import ClientTask, Egress, RoundOutcome

if TYPE_CHECKING:
    from estuary.client.context import ClientContext
    from estuary.knowledge.embedding import TextEmbedder
    from estuary.platform.run_context import ServerContext


def example_row(ex: Example, **extra: Any) -> dict[str, Any]:
    return {"uid": ex.uid, "label": ex.label, "text": ex.text, **extra}


@register
class FDKT(Strategy):
    name = "fdkt"
    config_class: ClassVar[type] = FDKTConfig
    server_use: ClassVar[str] = "serve"
    uses_privacy: ClassVar[bool] = True  # its DP generator's model is checked before the run starts
    description = "Clients send DP synthetic demos; the LLM filters and augments them; SLMs train on the result."
    task_kind = "classification"
    task_use = "transfers labelled task data"
    task_pairs = False  # its DP generator writes one text per example

    def __init__(self, exp: Any, params: Any | None = None) -> None:
        super().__init__(exp, params)
        self._embedder: TextEmbedder | None = None
        self._transfer: list[Example] = []  # what this round's train phase gets

    # ------------------------------------------------------------------ phase 1: DP synthetic data
    def configure_round(self, rnd: int, clients: list[str]) -> list[ClientTask]:
        return [ClientTask(cid, rnd, kind="synthesize", evaluate=False) for cid in clients]

    def client_step(self, ctx: ClientContext, task: ClientTask) -> Egress:
        p: FDKTConfig = self.params
        if task.kind == "synthesize":
            res = ctx.dp_synthesize(task.round, p.generator)
            metrics = {**privacy_metrics(res.epsilon, res.refused), "synthetic/kept": float(len(res.examples)),
                       "synthetic/refused": float(res.refused)}  # ε = ∞ (DP off) is privacy/non_private
            metrics.update({f"synthetic/{k}": float(v) for k, v in res.stats.items() if k != "kept"})
            payload = {"refusal": res.refusal} if res.refused else {}
            return ctx.egress(task, metrics=metrics, synthetic=list(res.examples), payload=payload)
        # phase 3: private data plus what the server sent
        return train_on_transfer(ctx, task, p.steps)

    # ------------------------------------------------------------------ phase 2: server filter + augment
    def aggregate(self, rnd: int, outcome: RoundOutcome) -> dict[str, Any]:
        synthetic = [ex for cid in sorted(outcome.results) for ex in outcome.results[cid].synthetic]
        refused = sorted(cid for cid, eg in outcome.results.items() if "refusal" in eg.payload)
        return {"synthetic": synthetic, "refused": refused}

    def _embed(self, texts: Any) -> Any:
        if self._embedder is None:
            from estuary.knowledge.embedding import TextEmbedder

            self._embedder = TextEmbedder(self.params.embedder)
        return self._embedder.embed(texts)

    def server_step(self, rnd: int, agg: dict[str, Any], server: ServerContext) -> dict[str, float]:
        from estuary.knowledge import augment, augment_all_labels, filter_examples

        p: FDKTConfig = self.params
        task = server.task
        seed = derive_seed(self.exp.seed, self.name, "server", rnd)
        synthetic: list[Example] = agg["synthetic"]
        metrics: dict[str, float] = {"synthetic/clients_refused": float(len(agg["refused"]))}
        if not synthetic:
            server.log(f"[yellow]fdkt round {rnd}: no client sent synthetic samples; clients train on private "
                       "data only[/yellow]")
            self._transfer = []
            return metrics
        llm = server.llm
        judges = self._judges(llm, task)
        first = filter_examples(synthetic, task, p.filter, embed=self._embed, seed=seed, **judges)
        kept_ids = {ex.uid for ex in first.kept}
        server.record("synthetic", [example_row(ex, strategy=self.name, round=rnd, client=ex.uid.split("/")[1],
                                                kept=ex.uid in kept_ids) for ex in synthetic])
        if p.augment_prompt == "all_labels":
            augmented, gen_stats = augment_all_labels(llm, task, first.kept, p.augment, seed=seed,
                                                      adapter=p.server_adapter)
        else:
            augmented, gen_stats = augment(llm, task, first.kept, p.augment, seed=seed, adapter=p.server_adapter)
        second = self._filter_augmented(augmented, first.kept, task, judges, seed + 1)
        server.record("augmented", [example_row(ex, strategy=self.name, round=rnd) for ex in second.kept])
        server.record("clusters", [{**c, "strategy": self.name, "round": rnd, "stage": stage}
                                   for stage, res in (("synthetic", first), ("augmented", second))
                                   for c in res.clusters])
        transfer = second.kept[: p.max_augmented] if p.max_augmented is not None else second.kept
        self._transfer = [*first.kept, *transfer] if p.send_raw_synthetic else transfer
        metrics.update({f"filter/synthetic/{k}": float(v) for k, v in first.stats.items()})
        metrics.update({f"augment/{k}": float(v) for k, v in gen_stats.items()})
        metrics.update({f"filter/augmented/{k}": float(v) for k, v in second.stats.items()})
        metrics["transfer/examples"] = float(len(self._transfer))
        return metrics

    def _judges(self, llm: Any, task: Any) -> dict[str, Any]:
        """The LLM judge of `filter.judge_scope`, as `filter_examples`' keyword (`sample_judge` or `judge`)."""
        from estuary.knowledge import llm_judge, llm_sample_judge

        f = self.params.filter
        adapter = self.params.server_adapter
        if f.judge_scope == "per_sample":
            return {"sample_judge": llm_sample_judge(llm, task, adapter=adapter, mode=f.judge_mode,
                                                     tolerance=f.judge_tolerance, max_tokens=f.judge_max_tokens)}
        return {"judge": llm_judge(llm, task, adapter=adapter, mode=f.judge_mode, agreement=f.judge_agreement,
                                   tolerance=f.judge_tolerance)}

    def _filter_augmented(self, augmented: list[Example], demos: list[Example], task: Any,
                          judges: dict[str, Any], seed: int) -> Any:
        """`filter_augmented`: length (the reference's word-count filter), clean or full (see FDKTConfig)."""
        from estuary.knowledge import filter_examples, length_filter

        p: FDKTConfig = self.params
        if p.filter_augmented == "length":
            return length_filter(augmented, p.augmented_min_words)
        if p.filter_augmented == "full":
            return filter_examples(augmented, task, p.filter, embed=self._embed,
                                   reference=[ex.text for ex in demos], seed=seed, **judges)
        return filter_examples(augmented, task, dataclasses.replace(p.filter, judge=False, near_duplicate=1.0),
                               embed=self._embed, seed=seed)

    # ------------------------------------------------------------------ phase 3: client training
    def configure_followup(self, rnd: int, outcome: RoundOutcome) -> list[ClientTask]:
        ev = self.should_evaluate(rnd)
        return [ClientTask(cid, rnd, kind="train", evaluate=ev, params={"transfer": self._transfer})
                for cid in sorted(outcome.results)]
