"""Loaders and task definitions against the real files in shared/data (fast: no Ray, no models)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from estuary.data import TASKS, Example, find_data_root, get_task, load_splits
from estuary.data.parsers import clean_news
from estuary.errors import DataError

# task -> (train, eval, test) sizes with the default seed and no subsampling
EXPECTED_SIZES = {
    "sst2": (6920, 872, 1821),
    "agnews": (5320, 760, 1520),
    "rte": (2241, 249, 277),
    "yelp": (3500, 500, 1000),
    "yelp-gen": (3500, 500, 1000),
}


@pytest.fixture(scope="module")
def root() -> Path:
    return find_data_root()


def _uids(examples: list[Example]) -> set[str]:
    return {e.uid for e in examples}


def test_registry_has_all_tasks_with_valid_label_words() -> None:
    assert set(TASKS) == {"sst2", "agnews", "rte", "yelp", "yelp-gen", "e2e"}
    for name, task in TASKS.items():
        assert task.name == name
        assert task.description and task.description.endswith(".")
        assert "{text}" in task.template
        if task.kind == "classification":
            assert task.num_labels >= 2
            assert len(task.label_names) == task.num_labels
            assert len(set(task.label_words)) == task.num_labels
            for word in task.label_words:
                assert word.startswith(" ") and not word.startswith("  ") and word.strip() == word[1:]
        else:
            assert task.num_labels == 0


def test_get_task_unknown_lists_known_tasks() -> None:
    with pytest.raises(DataError) as exc:
        get_task("imdb")
    msg = str(exc.value)
    assert "imdb" in msg and "sst2" in msg and "e2e" in msg and "\n" not in msg


@pytest.mark.parametrize("name", sorted(TASKS))
def test_splits_load_with_expected_sizes_and_labels(name: str, root: Path) -> None:
    splits = load_splits(name, root=root)
    task = splits.task
    assert task is get_task(name)
    if name in EXPECTED_SIZES:
        assert (len(splits.train), len(splits.eval), len(splits.test)) == EXPECTED_SIZES[name]
    for split in (splits.train, splits.eval, splits.test):
        assert split
        for e in split:
            assert e.text.strip()
            assert e.uid.startswith(f"{name}/")
            if task.kind == "classification":
                assert e.label is not None and 0 <= e.label < task.num_labels
                assert task.completion(e) in task.label_words
            else:
                assert e.label is None
            task.prompt(e)  # template formats
    if task.kind == "classification":
        assert {e.label for e in splits.train} == set(range(task.num_labels))
        assert {e.label for e in splits.test} == set(range(task.num_labels))


def test_split_uids_unique_and_disjoint(root: Path) -> None:
    for name in TASKS:
        s = load_splits(name, root=root, seed=3)
        tr, ev, te = _uids(s.train), _uids(s.eval), _uids(s.test)
        assert len(tr) == len(s.train) and len(ev) == len(s.eval) and len(te) == len(s.test)
        assert not (tr & ev) and not (tr & te) and not (ev & te), name


def test_same_seed_same_splits_different_seed_different(root: Path) -> None:
    for name in ("agnews", "rte", "yelp", "e2e"):
        a, b = load_splits(name, root=root, seed=1), load_splits(name, root=root, seed=1)
        c = load_splits(name, root=root, seed=2)
        assert [e.uid for e in a.train] == [e.uid for e in b.train]
        assert [e.uid for e in a.eval] == [e.uid for e in b.eval]
        assert _uids(a.eval) != _uids(c.eval), name
    # official splits do not move with the seed, but subsamples do
    s1 = load_splits("sst2", root=root, seed=1, train_size=100)
    s2 = load_splits("sst2", root=root, seed=2, train_size=100)
    assert _uids(s1.eval) == _uids(s2.eval)
    assert _uids(s1.train) != _uids(s2.train)


def test_subsampling_is_stratified_and_within_split(root: Path) -> None:
    full = load_splits("agnews", root=root, seed=5)
    sub = load_splits("agnews", root=root, seed=5, train_size=200, eval_size=40, test_size=0)
    assert (len(sub.train), len(sub.eval), len(sub.test)) == (200, 40, 0)
    assert _uids(sub.train) <= _uids(full.train) and _uids(sub.eval) <= _uids(full.eval)
    assert Counter(e.label for e in sub.train) == {0: 50, 1: 50, 2: 50, 3: 50}
    gen = load_splits("e2e", root=root, train_size=30)
    assert len(gen.train) == 30


def test_oversized_subsample_is_a_one_line_error(root: Path) -> None:
    with pytest.raises(DataError, match=r"data\.train_size=999999") as exc:
        load_splits("rte", root=root, train_size=999_999)
    assert "\n" not in str(exc.value)
    with pytest.raises(DataError, match="eval_size"):
        load_splits("rte", root=root, eval_size=-1)


def test_stratified_single_file_splits_keep_label_balance(root: Path) -> None:
    s = load_splits("agnews", root=root)
    for split, per_class in ((s.train, 1330), (s.eval, 190), (s.test, 380)):
        assert Counter(e.label for e in split) == dict.fromkeys(range(4), per_class)


def test_sst2_uses_official_files(root: Path) -> None:
    s = load_splits("sst2", root=root)
    assert s.train[0].uid == "sst2/train/0" and s.train[0].label == 1
    assert s.train[0].text.startswith("a stirring , funny")
    assert all(e.uid.startswith("sst2/dev/") for e in s.eval)
    assert all(e.uid.startswith("sst2/test/") for e in s.test)


def test_rte_pairs_and_label_words(root: Path) -> None:
    s = load_splits("rte", root=root)
    first = next(e for e in s.train + s.eval if e.uid == "rte/train/0")
    assert first.text.startswith("No Weapons of Mass Destruction Found in Iraq Yet")
    assert first.text_pair == "Weapons of Mass Destruction Found in Iraq."
    assert s.task.completion(first) == " no"  # not_entailment
    prompt = s.task.prompt(first)
    assert first.text in prompt and first.text_pair in prompt
    assert all(e.uid.startswith("rte/val/") for e in s.test)
    assert all(e.uid.startswith("rte/train/") for e in s.train + s.eval)


def test_agnews_text_is_cleaned(root: Path) -> None:
    s = load_splits("agnews", root=root)
    for e in s.train + s.eval + s.test:
        assert "\\" not in e.text and "#39;" not in e.text and "&lt;" not in e.text and "  " not in e.text
    assert clean_news("Wins  #36;10 million\\team #39;s &lt;TXN.N&gt; ok #151;done") == (
        "Wins $10 million team 's <TXN.N> ok \u2014done"
    )


def test_yelp_domains_and_shared_split(root: Path) -> None:
    cls, gen = load_splits("yelp", root=root, seed=4), load_splits("yelp-gen", root=root, seed=4)
    domains = {e.domain for e in cls.train + cls.eval + cls.test}
    assert len(domains) == 10 and "Restaurants" in domains and "Beauty & Spas" in domains
    assert not any(d is None or d.startswith("Business Category") for d in domains)
    # the two yelp tasks split the same rows the same way
    assert [e.uid.split("/")[-1] for e in cls.test] == [e.uid.split("/")[-1] for e in gen.test]
    assert all(e.target is None and e.domain for e in gen.train)
    assert gen.task.prompt(gen.train[0]) == gen.train[0].text
    stars = Counter(e.label for e in cls.train + cls.eval + cls.test)
    assert stars == {4: 2188, 3: 1111, 0: 750, 2: 516, 1: 435}


def test_e2e_no_meaning_representation_leaks(root: Path) -> None:
    s = load_splits("e2e", root=root, seed=7)
    train_mrs, eval_mrs = {e.text for e in s.train}, {e.text for e in s.eval}
    assert train_mrs and eval_mrs and not (train_mrs & eval_mrs)
    assert len(s.train) + len(s.eval) == 4672 and len(s.test) == 4693
    assert all(e.uid.startswith("e2e/devset/") for e in s.train + s.eval)
    for e in s.train[:50]:
        assert e.target is not None and e.target.startswith(" ") and not e.target.startswith("  ")
        assert s.task.completion(e) == e.target and "name[" in s.task.prompt(e)


def test_find_data_root_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    explicit, env = tmp_path / "a", tmp_path / "b"
    explicit.mkdir()
    env.mkdir()
    monkeypatch.setenv("ESTUARY_DATA", str(env))
    assert find_data_root(explicit) == explicit.resolve()
    assert find_data_root(str(explicit)) == explicit.resolve()
    assert find_data_root() == env.resolve()


def test_find_data_root_searches_beside_ancestors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "shared" / "data").mkdir(parents=True)
    deep = tmp_path / "clone" / "src" / "pkg"
    deep.mkdir(parents=True)
    monkeypatch.delenv("ESTUARY_DATA", raising=False)
    monkeypatch.chdir(deep)
    assert find_data_root() == (tmp_path / "shared" / "data").resolve()


def test_find_data_root_missing_paths_are_one_line_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(DataError, match=r"data\.root") as exc:
        find_data_root(tmp_path / "nope")
    assert "\n" not in str(exc.value)
    monkeypatch.setenv("ESTUARY_DATA", str(tmp_path / "nope"))
    with pytest.raises(DataError, match="ESTUARY_DATA"):
        find_data_root()
    with pytest.raises(DataError, match=r"data\.root"):
        load_splits("sst2", root=tmp_path / "nope")


def test_missing_file_names_path_and_setting(tmp_path: Path) -> None:
    with pytest.raises(DataError) as exc:
        load_splits("sst2", root=tmp_path)
    msg = str(exc.value)
    assert "/sst2 not found" in msg and "data.root" in msg and "ESTUARY_DATA" in msg and "\n" not in msg
    (tmp_path / "sst2").mkdir()
    _write(tmp_path, "sst2/dev.txt", "0 bad\n")
    with pytest.raises(DataError, match=r"data\.task\.splits\.train: .*sst2 has no split 'train' \(it has: dev\)"):
        load_splits("sst2", root=tmp_path)


def _write(root: Path, rel: str, text: str) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def test_malformed_rows_name_file_and_line(tmp_path: Path) -> None:
    _write(tmp_path, "sst2/train.txt", "1 good film\n2 what\n")
    _write(tmp_path, "sst2/dev.txt", "0 bad\n")
    _write(tmp_path, "sst2/test.txt", "0 bad\n")
    with pytest.raises(DataError, match=r"sst2/train\.txt, row 1 \(sst2/train/1\): label value '2' is not in"):
        load_splits("sst2", root=tmp_path)
    _write(tmp_path, "sst2/train.txt", "1 good film\n0\n")
    with pytest.raises(DataError, match=r"sst2/train\.txt:2: expected '<label> <text>'"):
        load_splits("sst2", root=tmp_path)
    _write(tmp_path, "rte/train.jsonl", '{"premise": "a", "hypothesis": "b", "label": "maybe"}\n')
    _write(tmp_path, "rte/val.jsonl", '{"premise": "a", "hypothesis": "b", "label": "entailment"}\n')
    with pytest.raises(DataError, match=r"rte/train\.jsonl, row 0 \(rte/train/0\): label value 'maybe'"):
        load_splits("rte", root=tmp_path)
    _write(tmp_path, "yelp/dev.csv", 'text,label1,label2\n"ok",Business Category: Bars,Review Stars: 9.0\n')
    with pytest.raises(DataError, match=r"yelp/dev\.csv, row 0 \(yelp/dev/0\): label value 'Review Stars: 9\.0'"):
        load_splits("yelp", root=tmp_path)
    _write(tmp_path, "yelp/dev.csv", 'text,label1,label2\n"ok",Bars,Review Stars: 2.0\n')
    with pytest.raises(DataError, match=r"domain value 'Bars' does not match data\.task\.extract\.domain"):
        load_splits("yelp", root=tmp_path)
    _write(tmp_path, "agnews/test.csv", 'Class Index,Title,Description\n5,"t","d"\n')
    with pytest.raises(DataError, match=r"agnews/test\.csv, row 0 \(agnews/test/0\): label value '5'"):
        load_splits("agnews", root=tmp_path)
    _write(tmp_path, "agnews/test.csv", 'Class Index,Title,Description\n1,"",""\n')
    with pytest.raises(DataError, match=r"agnews/test\.csv, row 0 \(agnews/test/0\): empty text"):
        load_splits("agnews", root=tmp_path)


def test_cache_sees_rewritten_files(tmp_path: Path) -> None:
    _write(tmp_path, "sst2/train.txt", "1 good film\n0 bad film\n")
    _write(tmp_path, "sst2/dev.txt", "0 bad\n")
    _write(tmp_path, "sst2/test.txt", "1 fine\n")
    assert len(load_splits("sst2", root=tmp_path).train) == 2
    import os

    path = tmp_path / "sst2" / "train.txt"
    path.write_text("1 good film\n0 bad film\n1 great\n", encoding="utf-8")
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    assert len(load_splits("sst2", root=tmp_path).train) == 3
