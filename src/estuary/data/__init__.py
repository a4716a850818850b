"""Data sets as task cards, their splits and federated partitions (see ``shared/data/README.md`` for the
built-in sources and README "Your own data" for cards)."""

from .card import TaskCard, builtin_names
from .data_config import DataConfig
from .datasets import TASKS, Splits, find_data_root, get_card, get_task, load_splits, stratified_sample
from .partition import SCHEMES, client_splits, label_entropy, label_histogram, partition
from .task import Example, Task, TaskKind

__all__ = [
    "SCHEMES",
    "TASKS",
    "DataConfig",
    "Example",
    "Splits",
    "Task",
    "TaskCard",
    "TaskKind",
    "builtin_names",
    "client_splits",
    "find_data_root",
    "get_card",
    "get_task",
    "label_entropy",
    "label_histogram",
    "load_splits",
    "partition",
    "stratified_sample",
]
