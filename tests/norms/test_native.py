"""Building and loading the compiled kernels (fewshot.norms.native): switches, cache, failures."""

from __future__ import annotations

import shutil
import stat
import warnings

import pytest

from fewshot.norms import native

HAS_CC = native._compiler() is not None


@pytest.fixture
def fresh(monkeypatch, tmp_path):
    """An empty cache under ``tmp_path`` and no library loaded yet in this process."""
    monkeypatch.setenv("FEWSHOT_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("FEWSHOT_NATIVE", raising=False)
    monkeypatch.setattr(native, "_loaded", {})
    return tmp_path


@pytest.mark.parametrize(("value", "on"), [("0", False), ("1", True), ("require", True), (" Require ", True)])
def test_the_environment_switch(monkeypatch, value, on):
    monkeypatch.setenv("FEWSHOT_NATIVE", value)
    assert native.enabled() is on


def test_an_unknown_switch_value_is_an_error_that_lists_the_values(monkeypatch):
    monkeypatch.setenv("FEWSHOT_NATIVE", "yes")
    with pytest.raises(ValueError, match=r"FEWSHOT_NATIVE must be 0 .* 1 .* or require .*, got 'yes'"):
        native.enabled()


def test_disabled_nests_and_restores(fresh):
    assert native.enabled()
    with native.disabled():
        with native.disabled():
            assert not native.enabled()
        assert not native.enabled()
        assert native.load("swbn_rows") is None
    assert native.enabled()


def test_switched_off_nothing_is_built(fresh, monkeypatch):
    monkeypatch.setenv("FEWSHOT_NATIVE", "0")
    assert native.load("swbn_rows") is None
    assert not (fresh / "cache").exists()


@pytest.mark.skipif(not HAS_CC, reason="no C compiler")
def test_build_is_cached_under_a_name_that_hashes_the_source(fresh, monkeypatch):
    lib = native.load("swbn_rows")
    assert lib is not None and native.load("swbn_rows") is lib  # loaded once per process
    built = sorted((fresh / "cache" / "native").glob("swbn_rows-*.so"))
    assert len(built) == 1
    mtime = built[0].stat().st_mtime_ns
    assert native._build("swbn_rows") == built[0] and built[0].stat().st_mtime_ns == mtime  # reused, not rebuilt
    changed = fresh / "src"
    changed.mkdir()
    source = (native.SOURCE_DIR / "swbn_rows.c").read_text()
    (changed / "swbn_rows.c").write_text(source + "\n/* changed */\n")
    monkeypatch.setattr(native, "SOURCE_DIR", changed)
    rebuilt = native._build("swbn_rows")
    assert rebuilt != built[0] and rebuilt.exists() and built[0].exists()
    assert not [p for p in (fresh / "cache" / "native").iterdir() if p.is_dir()]  # no temporary left behind


def _failing_compiler(folder):
    cc = folder / "failing-cc"
    cc.write_text("#!/bin/sh\necho 'cc: fatal error: no input' >&2\nexit 1\n")
    cc.chmod(cc.stat().st_mode | stat.S_IEXEC)
    return cc


def test_a_failed_build_warns_once_and_falls_back(fresh, monkeypatch):
    monkeypatch.setenv("CC", str(_failing_compiler(fresh)))
    with pytest.warns(RuntimeWarning, match=r"(?s)compiled kernel swbn_rows unavailable.*could not build.*no input"):
        assert native.load("swbn_rows") is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # remembered: the second call neither rebuilds nor warns again
        assert native.load("swbn_rows") is None


def test_a_failed_build_is_an_error_when_required(fresh, monkeypatch):
    monkeypatch.setenv("CC", str(_failing_compiler(fresh)))
    monkeypatch.setenv("FEWSHOT_NATIVE", "require")
    with pytest.raises(native.NativeBuildError, match=r"(?s)required \(FEWSHOT_NATIVE=require\).*could not build"):
        native.load("swbn_rows")


def test_no_compiler_is_named_in_the_error(fresh, monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(native.NativeBuildError, match=r"no C compiler found"):
        native._build("swbn_rows")


@pytest.mark.skipif(not HAS_CC, reason="no C compiler")
def test_a_damaged_cached_library_is_rebuilt(fresh):
    built = native._build("swbn_rows")
    built.write_bytes(b"not a shared object")
    assert native.load("swbn_rows") is not None
    assert built.read_bytes()[:4] == b"\x7fELF"
