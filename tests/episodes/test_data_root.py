"""Data-root resolution: flag > $FEWSHOT_DATA > ./data holding the dataset > <repo>/../shared/data > ./data."""

from __future__ import annotations

from pathlib import Path

import pytest

import episodes.data_root as dr
from fewshot.errors import DataError


@pytest.fixture
def shared(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, isolated_env: Path) -> Path:
    """A fake machine-provided copy, returned by ``shared_data_root``."""
    folder = tmp_path / "shared" / "data"
    (folder / "omniglot").mkdir(parents=True)
    (folder / "omniglot" / "README.md").write_text("x")
    monkeypatch.setattr(dr, "shared_data_root", lambda: folder)
    return folder


def test_flag_beats_environment(tmp_path: Path, shared: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    flag, env = tmp_path / "flag", tmp_path / "env"
    flag.mkdir(), env.mkdir()
    monkeypatch.setenv(dr.DATA_ENV, str(env))
    got = dr.explain_data_root(str(flag), "omniglot")
    assert (got.path, got.rule) == (flag, "flag")
    assert dr.resolve_data_root(None, "omniglot") == env
    assert dr.explain_data_root(None, "omniglot").rule == "env"


def test_cwd_data_is_used_only_if_it_holds_the_dataset(shared: Path) -> None:
    local = Path.cwd() / "data"
    (local / "omniglot").mkdir(parents=True)  # empty: does not count
    assert dr.explain_data_root(None, "omniglot").rule == "shared"
    (local / "omniglot" / "images_background.zip").write_bytes(b"")
    got = dr.explain_data_root(None, "omniglot")
    assert (got.path, got.rule) == (local, "cwd")
    assert dr.explain_data_root(None, "miniimagenet").rule == "shared"  # ./data lacks miniimagenet/


def test_shared_copy_then_default(shared: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    got = dr.explain_data_root(None, "omniglot")
    assert (got.path, got.rule) == (shared, "shared")
    assert "machine-provided" in got.reason
    monkeypatch.setattr(dr, "shared_data_root", lambda: tmp_path / "nowhere")
    got = dr.explain_data_root(None, "omniglot")
    assert (got.path, got.rule) == (Path.cwd() / "data", "default")


def test_missing_flag_or_env_folder_is_an_error(tmp_path: Path, shared: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(DataError, match=r"given by --data-root is not an existing folder"):
        dr.resolve_data_root(tmp_path / "missing", "omniglot")
    monkeypatch.setenv(dr.DATA_ENV, str(tmp_path / "missing"))
    with pytest.raises(DataError, match=r"given by \$FEWSHOT_DATA"):
        dr.resolve_data_root(None, "omniglot")


def test_fetch_root_never_picks_the_shared_copy(shared: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert dr.resolve_fetch_root(None).path == Path.cwd() / "data"
    assert dr.resolve_fetch_root(tmp_path / "new").path == tmp_path / "new"  # need not exist yet
    monkeypatch.setenv(dr.DATA_ENV, str(tmp_path / "env"))
    assert dr.resolve_fetch_root(None).rule == "env"


def test_cache_dir_from_environment_or_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(dr.CACHE_ENV, str(tmp_path / "c"))
    assert dr.resolve_cache_dir() == tmp_path / "c"
    monkeypatch.delenv(dr.CACHE_ENV)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert dr.resolve_cache_dir() == tmp_path / "home" / ".cache" / "fewshot"


def test_shared_root_is_next_to_the_repository() -> None:
    assert (dr.repo_root() / "episodes" / "data_root.py").is_file()
    assert dr.shared_data_root() == dr.repo_root().parent / "shared" / "data"


def test_real_omniglot_is_found_without_a_path(real_omniglot_root: Path, isolated_env: Path) -> None:
    """What the README and CI rely on: from any working directory, no flag, no env -> the machine copy."""
    got = dr.explain_data_root(None, "omniglot")
    assert got.rule == "shared"
    assert got.path == real_omniglot_root.resolve()
