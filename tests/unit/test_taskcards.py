"""Task cards on data sets the tests write (csv, tsv, jsonl, parquet, save_to_disk): loading, both task kinds,
string and integer labels, partitions, and one line for every kind of bad input (no Ray, no models)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from estuary.data import TaskCard, load_splits
from estuary.data.card import parse_card
from estuary.data.data_config import DataConfig
from estuary.data.federated import build_federated_data
from estuary.errors import DataError

DECISIONS = ("yes", "no", "maybe")


def medqa_rows(n: int = 60) -> list[dict[str, Any]]:
    return [{"question": f"Does drug {i} reduce symptom {i % 7}?",
             "context": f"A trial of drug {i} at hospital {i % 3}.", "final_decision": DECISIONS[i % 3],
             "hospital": f"h{i % 4}", "answer": f"Drug {i} helps."}
            for i in range(n)]


def write_csv(path: Path, rows: list[dict[str, Any]], sep: str = ",") -> Path:
    import csv

    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]), delimiter=sep)
        w.writeheader()
        w.writerows(rows)
    return path


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def medqa_card(path: Path, **over: Any) -> dict[str, Any]:
    card: dict[str, Any] = {
        "name": "medqa", "kind": "classification", "source": {"path": str(path)},
        "columns": {"text": "question", "text_pair": "context", "label": "final_decision"},
        "labels": {"yes": " yes", "no": " no", "maybe": " maybe"},
        "template": "Context: {text_pair}\nQuestion: {text}\nAnswer:",
        "description": "Answer a biomedical research question from its abstract with yes, no or maybe.",
        "subject": "a biomedical research question",
    }
    card.update(over)
    return card


def test_csv_classification_pairs_string_labels(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "medqa.csv", medqa_rows())
    s = load_splits(parse_card(medqa_card(path)), seed=0)
    assert s.sizes() == {"train": 42, "eval": 6, "test": 12} and s.carved == ("eval", "test")
    assert s.source_rows == {"train": 60} and "(csv)" in s.origin
    first = next(e for e in s.train + s.eval + s.test if e.uid == "medqa/medqa/0")
    assert (first.text, first.text_pair, first.label) == ("Does drug 0 reduce symptom 0?",
                                                          "A trial of drug 0 at hospital 0.", 0)
    assert s.task.prompt(first) + s.task.completion(first) == (
        "Context: A trial of drug 0 at hospital 0.\nQuestion: Does drug 0 reduce symptom 0?\nAnswer: yes")
    assert s.task.label_names == DECISIONS and s.task.paired
    assert s.task.extra["subject"] == "a biomedical research question"
    for split in (s.train, s.eval, s.test):  # stratified carve: every label in every split
        assert {e.label for e in split} == {0, 1, 2}
    again = load_splits(parse_card(medqa_card(path)), seed=0)
    assert [e.uid for e in again.test] == [e.uid for e in s.test]
    other = load_splits(parse_card(medqa_card(path)), seed=1)
    assert {e.uid for e in other.test} != {e.uid for e in s.test}


def test_jsonl_folder_of_splits_and_integer_labels(tmp_path: Path) -> None:
    rows = [{"sentence": f"text number {i}", "y": i % 4} for i in range(80)]
    write_jsonl(tmp_path / "news" / "train.jsonl", rows)
    write_jsonl(tmp_path / "news" / "test.jsonl", rows[:20])
    card = parse_card({"name": "news", "kind": "classification", "source": {"path": str(tmp_path / "news")},
                       "columns": {"text": "sentence", "label": "y"}, "labels": ["world", "sports", "business", "tech"],
                       "template": "Article: {text}\nTopic:"})
    s = load_splits(card, seed=0)
    assert s.sizes() == {"train": 72, "eval": 8, "test": 20} and s.carved == ("eval",)
    assert s.task.label_words == (" world", " sports", " business", " tech")
    assert all(e.uid.startswith("news/test/") for e in s.test)
    assert {e.label for e in s.train} == {0, 1, 2, 3}
    assert s.task.description == "Classify a text as world, sports, business or tech."  # the default


def test_parquet_tsv_and_string_list_labels(tmp_path: Path) -> None:
    import pandas as pd

    rows = [{"body": f"review {i}", "stars": ["bad", "good"][i % 2], "shop": f"s{i % 5}"} for i in range(50)]
    pd.DataFrame(rows).to_parquet(tmp_path / "reviews.parquet")
    write_csv(tmp_path / "reviews.tsv", rows, sep="\t")
    for name in ("reviews.parquet", "reviews.tsv"):
        card = parse_card({"name": "rev", "kind": "classification", "source": {"path": str(tmp_path / name)},
                           "columns": {"text": "body", "label": "stars", "domain": "shop"},
                           "labels": ["bad", "good"], "template": "Review: {text}\nIt was"})
        s = load_splits(card, seed=0)
        e = next(x for x in s.train + s.eval + s.test if x.uid == "rev/reviews/3")
        assert (e.text, e.label, e.domain) == ("review 3", 1, "s3"), name


def test_save_to_disk_generation_with_targets(tmp_path: Path) -> None:
    from datasets import Dataset, DatasetDict

    def part(n: int, off: int) -> Dataset:
        return Dataset.from_dict({"q": [f"question {i}" for i in range(off, off + n)],
                                  "a": [f"answer {i}" for i in range(off, off + n)]})

    DatasetDict({"train": part(30, 0), "validation": part(5, 30), "test": part(6, 40)}).save_to_disk(tmp_path / "qa")
    card = parse_card({"name": "qa", "kind": "generation", "source": {"path": str(tmp_path / "qa")},
                       "columns": {"text": "q", "target": "a"}, "template": "Q: {text}\nA:"})
    s = load_splits(card, seed=0)
    assert s.sizes() == {"train": 30, "eval": 5, "test": 6} and s.carved == ()
    assert s.eval[0].uid == "qa/validation/0" and s.eval[0].label is None
    assert s.task.prompt(s.train[0]) + s.task.completion(s.train[0]) == "Q: question 0\nA: answer 0"
    assert "save_to_disk" in s.origin
    Dataset.from_dict({"q": ["x"] * 20, "a": ["y"] * 20}).save_to_disk(tmp_path / "one")  # a Dataset: one split
    one = parse_card({**card.model_dump(), "source": {"path": str(tmp_path / "one")}})
    assert load_splits(one, seed=0).sizes() == {"train": 14, "eval": 2, "test": 4}


def test_text_columns_join_extract_and_news_cleaning(tmp_path: Path) -> None:
    rows = [{"title": "Wins #36;10", "body": "team #39;s &lt;b&gt; day", "cat": "Category: A", "y": "1"},
            {"title": "Ends.", "body": "", "cat": "Category: B", "y": "2"}] * 10
    path = write_csv(tmp_path / "n.csv", rows)
    card = parse_card({"name": "n", "kind": "classification", "source": {"path": str(path)},
                       "columns": {"text": ["title", "body"], "label": "y", "domain": "cat"},
                       "labels": {1: " one", 2: " two"}, "clean": "news", "extract": {"domain": "Category: (.+)"}})
    s = load_splits(card, seed=0)
    by_uid = {e.uid: e for e in s.train + s.eval + s.test}
    assert by_uid["n/n/0"].text == "Wins $10. team 's <b> day" and by_uid["n/n/0"].domain == "A"
    assert by_uid["n/n/1"].text == "Ends." and by_uid["n/n/1"].label == 1
    assert s.task.label_names == ("one", "two") and s.task.template == "Text: {text}\nAnswer:"
    assert parse_card(json.loads(card.model_dump_json())).to_task() == s.task  # the JSON a worker gets


def test_integer_labels_read_as_floats(tmp_path: Path) -> None:
    import pandas as pd

    pd.DataFrame({"t": [f"x{i}" for i in range(20)], "y": [float(i % 2) for i in range(20)]}).to_parquet(
        tmp_path / "f.parquet")
    card = parse_card({"name": "f", "kind": "classification", "source": {"path": str(tmp_path / "f.parquet")},
                       "columns": {"text": "t", "label": "y"}, "labels": {0: " zero", 1: " one"}})
    assert {e.label for e in load_splits(card).train} == {0, 1}


def test_every_partition_on_a_user_task(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "medqa.jsonl", medqa_rows(120))
    card = medqa_card(path, columns={"text": "question", "text_pair": "context", "label": "final_decision",
                                     "domain": "hospital"})
    for partition in ("iid", "dirichlet", "domain"):
        cfg = DataConfig(task=card, partition=partition, test_size=None, min_client_size=2)
        fd = build_federated_data(cfg.model_dump_json(), 4, 0)
        uids = [e.uid for cd in fd.clients.values() for e in cd.train + cd.eval]
        assert len(uids) == len(set(uids)) == 84, partition
        if partition == "domain":  # one hospital per client
            assert all(len({e.domain for e in cd.train + cd.eval}) == 1 for cd in fd.clients.values())


def test_card_file_and_relative_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from estuary.platform.loading import load_config

    write_csv(tmp_path / "proj" / "data" / "medqa.csv", medqa_rows())
    card = medqa_card(Path("data/medqa.csv"))
    (tmp_path / "proj" / "cards").mkdir()
    import yaml

    card_file = tmp_path / "proj" / "cards" / "medqa.yaml"
    card_file.write_text(yaml.safe_dump({**card, "source": {"path": "../data/medqa.csv"}}))
    job = tmp_path / "proj" / "job.yaml"
    job.write_text("method: standalone\nbaselines: []\nclients: {count: 2}\ndata: {task: cards/medqa.yaml}\n")
    monkeypatch.chdir(tmp_path)  # paths are relative to the job/card file, not the working directory
    cfg = load_config(job)
    assert isinstance(cfg.data.task, TaskCard) and cfg.data.task_name == "medqa"
    assert cfg.data.task.source.path == str((tmp_path / "proj" / "data" / "medqa.csv").resolve())
    job.write_text("method: standalone\nbaselines: []\nclients: {count: 2}\ndata:\n  task: " + json.dumps(card) + "\n")
    cfg = load_config(job)  # inline: relative to the job file
    assert cfg.data.task.source.path == str((tmp_path / "proj" / "data" / "medqa.csv").resolve())  # type: ignore[union-attr]
    # not beside the job: read under data.root
    root = tmp_path / "root"
    write_csv(root / "elsewhere" / "medqa.csv", medqa_rows())
    job.write_text("method: standalone\nbaselines: []\nclients: {count: 2}\ndata:\n  root: " + str(root) + "\n  task: "
                   + json.dumps(medqa_card(Path("elsewhere/medqa.csv"))) + "\n")
    cfg = load_config(job)
    fd = build_federated_data(cfg.data.model_dump_json(), 2, 0)
    assert sum(len(cd.train) + len(cd.eval) for cd in fd.clients.values()) == 42


def test_rewritten_file_is_read_again(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "m.csv", medqa_rows(30))
    card = parse_card(medqa_card(path))
    assert load_splits(card).source_rows == {"train": 30}
    write_csv(path, medqa_rows(45))
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    assert load_splits(card).source_rows == {"train": 45}


def _bad_files(tmp_path: Path) -> dict[str, Path]:
    (tmp_path / "empty.csv").write_text("")
    (tmp_path / "garbage.parquet").write_bytes(b"\x00\x01not parquet at all" * 10)
    (tmp_path / "sheet.xlsx").write_bytes(b"PK\x03\x04")
    return {"ok": write_csv(tmp_path / "medqa.csv", medqa_rows(12))}


@pytest.mark.parametrize(("over", "expected"), [
    ({"source": {"path": "/nope/medqa.csv"}}, r"data\.task\.source\.path: /nope/medqa\.csv not found"),
    ({"source": {"path": "{tmp}/empty.csv"}}, r"data\.task\.source\.path: .*empty\.csv is empty"),
    ({"source": {"path": "{tmp}/garbage.parquet"}},
     r"data\.task\.source\.path: cannot read .*garbage\.parquet as parquet"),
    ({"source": {"path": "{tmp}/sheet.xlsx"}}, r"cannot tell the format of .*sheet\.xlsx .*set source\.format"),
    ({"columns": {"text": "question", "label": "final_decison"}, "template": None},
     r"data\.task\.columns\.label: column 'final_decison' is not in .*did you mean 'final_decision'\?"),
    ({"labels": {"yes": " yes", "no": " no"}},
     r"medqa\.csv, row 2 \(medqa/medqa/2\): label value 'maybe' is not in data\.task\.labels \(yes, no\)"),
    ({"splits": {"train": "train", "test": "tst"}},
     r"data\.task\.splits\.test: .* has no split 'tst' \(it has: train\)"),
])
def test_bad_input_is_one_line(tmp_path: Path, over: dict[str, Any], expected: str) -> None:
    files = _bad_files(tmp_path)
    card = medqa_card(files["ok"])
    card.update({k: v for k, v in over.items()})
    if "source" in over:
        card["source"] = {"path": over["source"]["path"].replace("{tmp}", str(tmp_path))}
    card = {k: v for k, v in card.items() if v is not None}
    with pytest.raises(DataError, match=expected) as err:
        load_splits(parse_card(card))
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(("over", "expected"), [
    ({"template": "Q: {text}\nContext: {text_pair}\nA:", "columns": {"text": "question", "label": "final_decision"}},
     r"data\.task\.template: field \{text_pair\} has no column; set columns\.text_pair or remove it"),
    ({"template": "Q: {question}\nA:"}, r"template: field \{question\} is not one of \{text\}, \{text_pair\}"),
    ({"template": "Q: {text\nA:"}, r"data\.task\.template: .*literal brace"),
    ({"columns": {"text": "question", "lable": "x"}},
     r"data\.task\.columns\.lable: unknown key — did you mean 'label'\?"),
    ({"labelz": []}, r"data\.task\.labelz: unknown key — did you mean 'labels'\?"),
    ({"labels": {True: " yes", False: " no"}}, r"data\.task\.labels: YAML read a label yes/no/on/off as a boolean"),
    ({"labels": ["yes"]}, r"data\.task\.labels: a classification task needs 2 or more labels"),
    ({"labels": {1: " a", "1": " b"}}, r"data\.task\.labels: a value is listed twice \(1, 1\)"),
    ({"kind": "generation"}, r"data\.task\.labels: a generation task has no labels"),
    ({"source": {"path": "a.csv", "hf": "org/name"}}, r"data\.task\.source: .*exactly one of source\.path"),
    ({"kind": "regression"}, r"data\.task\.kind: Input should be 'classification' or 'generation'"),
])
def test_bad_card_is_one_line_naming_the_field(over: dict[str, Any], expected: str) -> None:
    card = {**medqa_card(Path("x.csv")), **over}
    with pytest.raises(DataError, match=expected) as err:
        parse_card(card)
    assert "\n" not in str(err.value)


def test_unknown_task_names_and_too_few_examples(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"unknown task 'sst' \(data\.task\); did you mean 'sst2'\?"):
        DataConfig(task="sst")
    with pytest.raises(DataError, match=r"card file .*nope\.yaml not found"):
        DataConfig(task="cards/nope.yaml")
    path = write_csv(tmp_path / "medqa.csv", medqa_rows(30))
    cfg = DataConfig(task=medqa_card(path), partition="iid")
    with pytest.raises(DataError, match=r"task medqa has 21 train examples, too few for 8 clients of at least 4 "
                                        r"\(data\.min_client_size\); lower clients\.count") as err:
        build_federated_data(cfg.model_dump_json(), 8, 0)
    assert "\n" not in str(err.value)


def test_partition_must_fit_the_card(tmp_path: Path) -> None:
    from pydantic import ValidationError

    path = write_csv(tmp_path / "medqa.csv", medqa_rows(30))
    with pytest.raises(ValidationError, match=r"partition 'domain' needs the task's columns\.domain"):
        DataConfig(task=medqa_card(path), partition="domain")
    gen = {"name": "qa", "kind": "generation", "source": {"path": str(path)},
           "columns": {"text": "question", "target": "answer"}}
    assert DataConfig(task=gen).partition == "iid"  # no labels to skew: iid unless the job says otherwise
    with pytest.raises(ValidationError, match=r"partition 'dirichlet' skews labels; task qa is a generation task"):
        DataConfig(task=gen, partition="dirichlet")


def test_readme_documents_every_card_field() -> None:
    from pydantic import BaseModel

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.split("### Your own data", 1)[1].split("\n## ", 1)[0]

    def fields(model: type[BaseModel], prefix: str = "") -> list[str]:
        out = []
        for name, info in model.model_fields.items():
            ann = info.annotation
            if isinstance(ann, type) and issubclass(ann, BaseModel):
                out += fields(ann, f"{prefix}{name}.")
            else:
                out.append(prefix + name)
            assert info.description, prefix + name  # help text on every field
        return out

    missing = [f for f in fields(TaskCard) if f"`{f}`" not in section]
    assert not missing, missing


def test_datasets_cache_lives_in_the_estuary_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from estuary.data.source import cache_dir
    from estuary.models import cache_dir as estuary_cache

    assert cache_dir() == estuary_cache() / "datasets"
    monkeypatch.setenv("ESTUARY_CACHE", str(tmp_path))
    assert cache_dir() == estuary_cache() / "datasets" == tmp_path / "datasets"
