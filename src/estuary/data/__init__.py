"""Data sets, tasks and federated partitions (see ``shared/data/README.md`` for the sources)."""

from .datasets import TASKS, Splits, find_data_root, get_task, load_splits, stratified_sample
from .partition import SCHEMES, client_splits, label_entropy, label_histogram, partition
from .task import Example, Task, TaskKind

__all__ = [
    "SCHEMES",
    "TASKS",
    "Example",
    "Splits",
    "Task",
    "TaskKind",
    "client_splits",
    "find_data_root",
    "get_task",
    "label_entropy",
    "label_histogram",
    "load_splits",
    "partition",
    "stratified_sample",
]
