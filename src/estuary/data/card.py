"""Task cards: a data set, its columns, labels and prompt, as data (README "Your own data").

A card is written inline under `data.task`, in its own YAML file (`data.task: cards/medqa.yaml`), or is one
of the built-in cards shipped in `estuary/data/cards/` (`data.task: sst2`). Every task, built-in or not, is
loaded by the same loader (`estuary.data.loader`). A bad card is one line naming the field
(`data.task.columns.label`) and the fix.
"""

from __future__ import annotations

import difflib
import functools
import re
import string
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from estuary.errors import DataError

from .task import Task, TaskKind

ROLES = ("text", "text_pair", "label", "target", "domain")
TEMPLATE_FIELDS = ("text", "text_pair", "domain")  # what a prompt template may name
SPLITS = ("train", "eval", "test")
FORMATS = ("csv", "tsv", "json", "jsonl", "parquet", "arrow", "disk", "label-lines")


class _Part(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SourceSpec(_Part):
    path: str | None = Field(
        None, description="A csv, tsv, json, jsonl, parquet or arrow file, a folder of such files (one per split, "
        "named by split: train.csv, test.csv), or a `save_to_disk` folder; relative to the file that holds the "
        "card (the job file), then to data.root.")
    hf: str | None = Field(None, description="A Hugging Face hub data set id (org/name), on machines with a hub.")
    config: str | None = Field(None, description="The hub data set's configuration (subset) name.")
    revision: str | None = Field(None, description="The hub data set's revision (branch, tag or commit).")
    format: Literal["csv", "tsv", "json", "jsonl", "parquet", "arrow", "disk", "label-lines"] | None = Field(
        None, description="The files' format; default: from the suffix (a folder with dataset_dict.json or "
        "state.json is `disk`). label-lines: one `<label> <text>` per line (SST-2's files).")

    @model_validator(mode="after")
    def _one_source(self) -> SourceSpec:
        if (self.path is None) == (self.hf is None):
            raise ValueError("give exactly one of source.path (a file or folder) and source.hf (a hub id)")
        if self.hf is None and (self.config is not None or self.revision is not None):
            raise ValueError("source.config and source.revision apply to source.hf only")
        return self


class Columns(_Part):
    text: str | list[str] = Field(
        description="The column of the (first) text; a list of columns is joined as sentences (title + body).")
    text_pair: str | None = Field(None, description="The column of the second text of a pair (RTE's hypothesis).")
    label: str | None = Field(None, description="The column of the label (classification).")
    target: str | None = Field(
        None, description="The column the model writes after the prompt (generation: an answer, a reference).")
    domain: str | None = Field(
        None, description="A column naming each example's group (hospital, user, category): "
        "data.partition=domain gives each client group whole groups.")

    @field_validator("text")
    @classmethod
    def _some_text(cls, v: str | list[str]) -> str | list[str]:
        if isinstance(v, list) and not v:
            raise ValueError("give a column name or a non-empty list of columns")
        return v

    def names(self, role: str) -> list[str]:
        value = getattr(self, role)
        return [] if value is None else [value] if isinstance(value, str) else list(value)


class Carve(_Part):
    eval: float = Field(0.1, gt=0, lt=1, description="Share of train carved as eval when the source has no eval.")
    test: float = Field(0.2, gt=0, lt=1, description="Share of train carved as test when the source has no test.")
    stratify: str | None = Field(
        None, description="A source column whose values every carved split keeps in proportion "
        "(default: the label, for classification; none for generation).")
    group: str | None = Field(
        None, description="A source column whose equal values go to one split (E2E: a meaning representation's "
        "references stay together); overrides stratify.")
    seed_name: str | None = Field(
        None, description="Mixed into the seed of the carve (default: the task name): tasks on one source with one "
        "seed_name split it alike (yelp and yelp-gen).")

    @model_validator(mode="after")
    def _room_for_train(self) -> Carve:
        if self.eval + self.test >= 1:
            raise ValueError(f"carve.eval + carve.test = {self.eval + self.test:g} leaves no train; keep it below 1")
        return self


class TaskCard(_Part):
    """One task: where its data is, which columns hold what, its labels and its prompt."""

    name: str = Field(description="Task name: the run's task label and the prefix of every example uid.")
    kind: TaskKind = Field(description="classification (a label per example) or generation (a target or text).")
    source: SourceSpec = Field(description="Where the data is: a file, a folder or a hub id.")
    splits: dict[Literal["train", "eval", "test"], str] = Field(
        default_factory=dict, description="Split names in the source for train, eval and test (a single file is "
        "one split, `train`); default: train, then validation/eval/dev and test where the source has them. A "
        "missing eval or test split is carved from train (see carve).")
    columns: Columns = Field(description="Source column of each role: text, text_pair, label, target, domain.")
    labels: list[str | int] | dict[str | int, str] | None = Field(
        None, description="Classification: label value -> verbalizer word ({\"yes\": \" yes\"}), or a list of "
        "values whose word is \" \" + value (integer labels index the list).")
    label_names: list[str] | None = Field(
        None, description="Human names of the labels, in label order, for LLM prompts (default: the values).")
    template: str | None = Field(
        None, description="The prompt: a str.format template over {text}, {text_pair} and {domain}; the label "
        "word or target follows it (default: 'Text: {text}\\nAnswer:' for classification, '{text}' otherwise).")
    description: str | None = Field(
        None, description="One sentence describing the task, for the prompts methods write for the server LLM.")
    subject: str | None = Field(
        None, description="What one text is ('a biomedical research question'), for LLM and DP-generator prompts.")
    prefix: str | None = Field(
        None, description="Public text every example starts with (E2E's 'name['); DP generators write from it.")
    sample_pattern: str | None = Field(
        None, description="DP generators: a regular expression with groups (?P<text>...) and (?P<target>...) "
        "that splits a generated 'text target' line (E2E's attribute schema); default: a generation task with "
        "targets has its samples written as its template on one line, the target after it, and split on it.")
    clean: Literal["strip", "news"] = Field(
        "strip", description="Text cleaning: strip (trim spaces), news (also undo AG News escapes: #39; &lt; \\).")
    extract: dict[Literal["text", "text_pair", "label", "target", "domain"], str] = Field(
        default_factory=dict, description="Role -> regular expression each value must match in full; its first "
        "group is kept ({domain: 'Business Category: (.+)'}).")
    carve: Carve = Field(default_factory=Carve, description="How missing eval/test splits are carved from train.")

    @field_validator("name", mode="before")
    @classmethod
    def _plain_name(cls, v: Any) -> Any:
        if isinstance(v, str) and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", v):
            raise ValueError("use letters, digits, '.', '_' and '-' (the name starts every example uid)")
        return v

    @field_validator("labels", mode="before")
    @classmethod
    def _no_yaml_booleans(cls, v: Any) -> Any:
        keys = list(v) if isinstance(v, dict | list) else []
        if any(isinstance(k, bool) for k in keys):
            raise ValueError("YAML read a label yes/no/on/off as a boolean; quote it (\"yes\": \" yes\")")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> TaskCard:
        if self.kind == "classification":
            if self.columns.label is None:
                raise ValueError("columns.label: a classification task needs its label column")
            if not self.labels or len(self.labels) < 2:
                raise ValueError("labels: a classification task needs 2 or more labels, e.g. {\"yes\": \" yes\", "
                                 "\"no\": \" no\"} or [negative, positive]")
            keys, words = self.label_keys(), self.label_words()
            if len(set(keys)) != len(keys):
                raise ValueError(f"labels: a value is listed twice ({', '.join(keys)})")
            if len(set(words)) != len(words):
                raise ValueError(f"labels: two labels share a verbalizer word ({', '.join(map(repr, words))})")
            if self.label_names is not None and len(self.label_names) != len(words):
                raise ValueError(f"label_names: {len(self.label_names)} names for {len(words)} labels; one per label")
        elif self.labels is not None or self.label_names is not None or self.columns.label is not None:
            raise ValueError("labels: a generation task has no labels; remove labels and columns.label (or use "
                             "kind: classification)")
        self._check_template(self.prompt_template())
        self._check_sample_pattern()
        for field in ("stratify", "group"):
            if getattr(self.carve, field) == "":
                raise ValueError(f"carve.{field}: give a column name or leave it out")
        return self

    def _check_template(self, template: str) -> None:
        try:
            fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
        except ValueError as exc:
            raise ValueError(f"template: {exc} (write a literal brace as {{{{ or }}}})") from None
        for f in fields:
            if f not in TEMPLATE_FIELDS:
                hint = difflib.get_close_matches(f, TEMPLATE_FIELDS, n=1)
                raise ValueError(f"template: field {{{f}}} is not one of {{text}}, {{text_pair}}, {{domain}}"
                                 + (f"; did you mean {{{hint[0]}}}?" if hint else ""))
            if getattr(self.columns, f) is None:
                raise ValueError(f"template: field {{{f}}} has no column; set columns.{f} or remove it")
        if "text" not in fields:
            raise ValueError("template: name the text as {text}")

    def _check_sample_pattern(self) -> None:
        if self.sample_pattern is None:
            return
        try:
            groups = re.compile(self.sample_pattern).groupindex
        except re.error as exc:
            raise ValueError(f"sample_pattern: not a regular expression ({exc})") from None
        if not {"text", "target"} <= set(groups):
            raise ValueError("sample_pattern: name its two parts (?P<text>...) and (?P<target>...)")
        if self.columns.target is None:
            raise ValueError("sample_pattern: only a generation task with a target column splits its samples")

    # ------------------------------------------------------------------ derived
    def label_keys(self) -> list[str]:
        """The label values of the source, as strings, in label order."""
        if self.labels is None:
            return []
        return [str(k) for k in self.labels]

    def label_words(self) -> list[str]:
        if self.labels is None:
            return []
        if isinstance(self.labels, dict):
            words = [str(w) for w in self.labels.values()]
        else:
            words = [str(v) for v in self.labels]
        return [w if w.startswith(" ") else " " + w for w in words]

    def prompt_template(self) -> str:
        if self.template is not None:
            return self.template
        if self.kind == "generation":
            return "{text}"
        pair = "\nSecond text: {text_pair}" if self.columns.text_pair is not None else ""
        return "Text: {text}" + pair + "\nAnswer:"

    def names_of_labels(self) -> list[str]:
        if self.label_names is not None:
            return list(self.label_names)
        if isinstance(self.labels, dict) and all(k.lstrip("-").isdigit() for k in self.label_keys()):
            return [w.strip() for w in self.label_words()]
        return self.label_keys()

    def default_description(self) -> str:
        subject = self.subject or ("a text pair" if self.columns.text_pair else "a text")
        if self.kind == "classification":
            names = self.names_of_labels()
            return f"Classify {subject} as {', '.join(names[:-1])} or {names[-1]}."
        if self.columns.target is not None:
            return f"Given {subject}, write its {self.columns.names('target')[0]}."
        return f"Write {subject}."

    def to_task(self) -> Task:
        """The Task the methods and evaluation use (its description and subject feed the LLM prompts)."""
        named = (("subject", self.subject), ("prefix", self.prefix), ("sample_pattern", self.sample_pattern))
        extra = {k: v for k, v in named if v is not None}
        return Task(name=self.name, kind=self.kind, template=self.prompt_template(),
                    label_words=tuple(self.label_words()), label_names=tuple(self.names_of_labels()),
                    description=self.description or self.default_description(), extra=extra,
                    targets=self.kind == "generation" and self.columns.target is not None)


# ---------------------------------------------------------------------------------------------------
# Built-in cards, card files, one-line errors

CARDS_DIR = Path(__file__).parent / "cards"


def builtin_names() -> list[str]:
    return sorted(p.stem for p in CARDS_DIR.glob("*.yaml"))


def card_error(err: ValidationError, where: str) -> str:
    """The first error of a card as one line: `where.columns.label: ... — did you mean ...?`."""
    e = err.errors()[0]
    loc = [str(p) for p in e["loc"]]
    field = ".".join([where, *loc])
    if e["type"] == "extra_forbidden":
        model: Any = TaskCard
        for p in loc[:-1]:
            info = model.model_fields.get(p) if isinstance(model, type) and issubclass(model, BaseModel) else None
            model = info.annotation if info is not None else None
        known = list(model.model_fields) if isinstance(model, type) and issubclass(model, BaseModel) else []
        close = difflib.get_close_matches(loc[-1], known, n=1)
        hint = f"did you mean '{close[0]}'?" if close else f"known keys: {', '.join(known)}" if known else ""
        return f"{field}: unknown key — {hint}".rstrip(" —")
    msg = str(e["msg"]).removeprefix("Value error, ")
    inner = re.match(r"([a-z_]+(?:\.[a-z_]+)*): (.*)", msg)  # "columns.label: ..." from a card-wide check
    if inner is not None and inner.group(1).split(".")[0] in TaskCard.model_fields:
        return f"{field}.{inner.group(1)}: {inner.group(2)}"
    got = e.get("input")
    return f"{field}: {msg}" + ("" if isinstance(got, dict | list) or got is None else f" (got {got!r})")


def parse_card(data: Any, where: str = "data.task") -> TaskCard:
    """A card from its mapping; DataError naming the field otherwise."""
    if isinstance(data, TaskCard):
        return data
    if not isinstance(data, dict):
        raise DataError(f"{where}: a task card is a mapping (name:, kind:, source:, columns:, ...), "
                        f"got {type(data).__name__}")
    try:
        return TaskCard.model_validate(data)
    except ValidationError as err:
        raise DataError(card_error(err, where)) from None


def read_card_file(path: Path, where: str = "data.task") -> dict[str, Any]:
    """The mapping in a card YAML file (one-line DataError for a missing, binary or malformed file)."""
    import yaml

    try:
        text = path.read_text(encoding="utf-8")
        data = yaml.safe_load(text)
    except FileNotFoundError:
        raise DataError(f"{where}: card file {path} not found; give a built-in task ({', '.join(builtin_names())}) "
                        "or the path of a card YAML file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{where}: cannot read card file {path} ({type(exc).__name__}); give a UTF-8 YAML file") \
            from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark is not None else ""
        raise DataError(f"{where}: card file {path}{line} is not valid YAML "
                        f"({str(getattr(exc, 'problem', exc)).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise DataError(f"{where}: card file {path} must hold a mapping (name:, kind:, source:, ...)")
    return data


@functools.lru_cache(maxsize=32)
def builtin_card(name: str) -> TaskCard:
    """The built-in card `name`; DataError with the known names (and the closest) otherwise."""
    path = CARDS_DIR / f"{name}.yaml"
    if not path.is_file() or "/" in name:
        known = builtin_names()
        close = difflib.get_close_matches(name, known, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise DataError(f"unknown task {name!r} (data.task); {hint}use one of: {', '.join(known)}, "
                        "the path of a card YAML file, or a card inline")
    return parse_card(read_card_file(path), where=f"built-in card {name}")


def is_card_path(ref: str) -> bool:
    return ref.endswith((".yaml", ".yml")) or "/" in ref or ref.startswith(".")
