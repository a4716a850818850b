"""`estuary data JOB` and the data/model checks of `estuary validate`: bad input is one line, exit 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from estuary.cli import main

from .test_taskcards import medqa_card, medqa_rows, write_csv


def job(tmp_path: Path, data: str, extra: str = "") -> Path:
    path = tmp_path / "job.yaml"
    path.write_text(f"name: medqa\nmethod: standalone\nbaselines: [zero_shot]\nclients: {{count: 3}}\n{extra}"
                    f"data:\n{data}")
    return path


def user_job(tmp_path: Path, **over: object) -> Path:
    write_csv(tmp_path / "data" / "medqa.csv", medqa_rows(60))
    card = medqa_card(Path("data/medqa.csv"), **over)
    return job(tmp_path, f"  partition: iid\n  task: {json.dumps(card)}\n")


def one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


def test_data_command_shows_the_resolved_task(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", str(user_job(tmp_path, subject="a question [with brackets]"))]) == 0
    out = capsys.readouterr().out
    assert "a question [with brackets]" in out  # data, not rich markup
    assert "medqa.csv (csv)" in out and "train 60" in out  # source and its rows
    assert "train 42, eval 6, test 12; carved from train: eval, test" in out
    assert "labels per split" in out and "maybe" in out
    assert out.count("prompt → completion") == 3 and "Question: Does drug" in out and "Answer: " in out
    assert "client shards (3 clients, partition iid)" in out and "c002" in out


@pytest.mark.parametrize(("over", "expected"), [
    ({"source": {"path": "data/nope.csv"}}, "data.task.source.path"),
    ({"columns": {"text": "question", "text_pair": "context", "label": "decision"}}, "data.task.columns.label"),
    ({"labels": {"yes": " yes", "no": " no"}}, "label value 'maybe' is not in data.task.labels"),
    ({"template": "Q: {text}\nC: {context}\nA:"}, "data.task.template"),
    ({"splits": {"train": "train", "eval": "dev"}}, "data.task.splits.eval"),
])
def test_validate_refuses_bad_data_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                               over: dict[str, object], expected: str) -> None:
    assert main(["validate", str(user_job(tmp_path, **over))]) == 2
    assert expected in one_error_line(capsys)


def test_validate_checks_sizes_root_models_and_the_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = user_job(tmp_path)
    assert main(["validate", str(path), "--set", "clients.count=12"]) == 2
    assert "too few for 12 clients" in one_error_line(capsys)
    assert main(["validate", str(path), "--set", "models.client=smolm2-135m"]) == 2
    assert "unknown model 'smolm2-135m'" in one_error_line(capsys)
    assert main(["validate", str(job(tmp_path, "  task: sst2\n  root: /nope/data\n"))]) == 2
    assert "data.root '/nope/data' is not a folder" in one_error_line(capsys)
    binary = tmp_path / "job.bin"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe")
    assert main(["validate", str(binary)]) == 2
    assert "not a text file" in one_error_line(capsys)
    nul = tmp_path / "nul.yaml"
    nul.write_text("name: a\x00b\n")
    assert main(["validate", str(nul)]) == 2
    assert "is not valid YAML" in one_error_line(capsys)
    assert main(["validate", str(user_job(tmp_path))]) == 0
    assert "task medqa" in capsys.readouterr().out


def test_methods_refuse_a_user_task_they_cannot_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = user_job(tmp_path)  # pairs: CrossLM writes one text per example
    assert main(["validate", str(path), "--set", "method=crosslm", "--set", "baselines=[]"]) == 2
    assert "crosslm has the LLM write labelled task data; data.task 'medqa' has text pairs" in one_error_line(capsys)
    assert main(["validate", str(path), "--set", "method=distildp", "--set", "baselines=[]"]) == 2
    assert "data.task 'medqa' is a classification task, not a generation one" in one_error_line(capsys)
