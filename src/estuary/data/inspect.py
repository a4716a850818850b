"""`estuary data JOB`: the resolved task, before any training — its source and row counts, split sizes, the
label histogram of every split, rendered prompts with their completions, and each client's shard.

`check_data` is what `estuary validate` runs: it loads the task and builds every client's shard exactly as a
run does (so a missing file, a bad column, a label not in `labels`, a missing split or too few examples for
the clients is one line before Ray starts). Everything here is the data layer's: the job file is loaded by
the caller.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .data_config import DataConfig
from .datasets import Splits, find_data_root, load_job_splits
from .federated import FederatedData, build_federated_data
from .task import Example, Task


@dataclass(frozen=True)
class DataReport:
    cfg: DataConfig
    splits: Splits  # as the run loads them (train_size / test_size applied)
    federated: FederatedData


def check_data(cfg: DataConfig, clients: int, seed: int) -> DataReport:
    """Load the task and build every client's shard as a run does; DataError (one line) on bad input."""
    root = find_data_root(cfg.root) if cfg.root else None
    splits = load_job_splits(cfg.task, root, seed, cfg.train_size, cfg.test_size)
    federated = build_federated_data(cfg.model_dump_json(), clients, seed)
    return DataReport(cfg, splits, federated)


def _mix(task: Task, examples: Sequence[Example]) -> str:
    """`name count` per label (classification; '—' for generation)."""
    if task.kind != "classification":
        return "—"
    counts = Counter(e.label for e in examples)
    return "  ".join(f"{name} {counts.get(i, 0)}" for i, name in enumerate(task.label_names))


def _domains(examples: Sequence[Example], top: int = 2) -> str:
    """The shard's domains, largest first (`name count`, then how many more)."""
    counts = Counter(e.domain for e in examples if e.domain is not None).most_common()
    shown = "  ".join(f"{d} {n}" for d, n in counts[:top])
    return shown + (f"  +{len(counts) - top} more" if len(counts) > top else "") if counts else "—"


def _row(table: Table, *cells: object) -> None:
    """Cells are data, not rich markup (a subject's `key[value]` stays as written)."""
    table.add_row(*(escape(str(c)) for c in cells))


def _task_table(report: DataReport) -> Table:
    cfg, s = report.cfg, report.splits
    card = cfg.card()
    table = Table("field", "value", title="task card", show_header=False)
    _row(table, "task", s.task.name)
    _row(table, "kind", s.task.kind)
    _row(table, "source", s.origin)
    _row(table, "source rows", ", ".join(f"{k} {v}" for k, v in s.source_rows.items()))
    carved = f"; carved from train: {', '.join(s.carved)}" if s.carved else ""
    _row(table, "splits", ", ".join(f"{k} {v}" for k, v in s.sizes().items()) + carved)
    _row(table, "columns", ", ".join(f"{r}={v}" for r, v in card.columns.model_dump().items() if v is not None))
    if s.task.kind == "classification":
        words = ", ".join(f"{n} →{w!r}" for n, w in zip(s.task.label_names, s.task.label_words, strict=True))
        _row(table, "labels", words)
    _row(table, "description", s.task.description)
    _row(table, "subject", s.task.extra.get("subject", "— (none: DP generator prompts have no subject line)"))
    _row(table, "partition", f"{cfg.partition}" + (f" (alpha {cfg.alpha})" if cfg.partition == "dirichlet" else ""))
    return table


def _histogram(report: DataReport) -> Table | None:
    task, s = report.splits.task, report.splits
    if task.kind != "classification":
        return None
    table = Table("split", *task.label_names, title="labels per split")
    for name, examples in (("train", s.train), ("eval", s.eval), ("test", s.test)):
        counts = Counter(e.label for e in examples)
        _row(table, name, *(str(counts.get(i, 0)) for i in range(task.num_labels)))
    return table


def _clients(report: DataReport) -> Table:
    fd = report.federated
    domains = any(e.domain is not None for cd in fd.clients.values() for e in cd.train)
    table = Table("client", "train", "eval", "train labels", *(["train domains"] if domains else []),
                  title=f"client shards ({len(fd.clients)} clients, partition {report.cfg.partition})")
    for cid, cd in fd.clients.items():
        row = [cid, str(len(cd.train)), str(len(cd.eval)), _mix(fd.task, cd.train)]
        _row(table, *row, *([_domains(cd.train)] if domains else []))
    return table


def print_report(report: DataReport, console: Console, examples: int = 3) -> None:
    """The whole report on `console`."""
    console.print(_task_table(report))
    hist = _histogram(report)
    if hist is not None:
        console.print(hist)
    task = report.splits.task
    for ex in report.splits.train[:examples]:
        console.rule(f"prompt → completion ({ex.uid})")
        console.print(task.prompt(ex), end="", highlight=False, markup=False)
        console.print(task.completion(ex) or "", style="bold green", highlight=False, markup=False)
    console.rule()
    console.print(_clients(report))


def data_command(cfg: DataConfig, clients: int, seed: int, console: Console, examples: int = 3) -> int:
    """`estuary data`: check and print; the caller loaded the job file."""
    print_report(check_data(cfg, clients, seed), console, examples)
    return 0

