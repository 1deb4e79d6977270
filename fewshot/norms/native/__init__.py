"""Compiled CPU kernels of the normalization layers: built from the C sources here on first use, then cached.

One kernel today, ``swbn_rows.c``: SWBN's training forward and closed-form backward fused with the batch
standardization (:mod:`fewshot.norms.swbn_rows`). It is plain C with OpenMP, loaded through :mod:`ctypes`, so it
needs no build step at install time and no dependency beyond a C compiler, which the Quick start's machines have
(``cc``; any GCC-compatible compiler, ``$CC`` to choose). The library is compiled with ``-O3 -march=native`` into
``$FEWSHOT_CACHE/native`` (default ``~/.cache/fewshot/native``) under a name that hashes the source, the flags,
the compiler's version and the CPU's instruction-set flags, so a changed source or another host never loads a
stale or foreign binary; it is written to a temporary name and renamed, so concurrent processes never load a
half-written file.

Where no compiler is found or the build fails, :func:`load` returns ``None`` and issues one warning naming the
reason, and the layers use their torch implementation (same function, slower). ``FEWSHOT_NATIVE=0`` turns the
compiled kernels off; ``FEWSHOT_NATIVE=require`` turns a failed build into an error (CI and benchmarks use it to
make sure they measure the kernel).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["NativeBuildError", "cache_dir", "disabled", "enabled", "load"]

SOURCE_DIR = Path(__file__).resolve().parent
FLAGS = ("-O3", "-march=native", "-fopenmp", "-shared", "-fPIC", "-std=gnu11")
_lock = threading.Lock()
_loaded: dict[str, ctypes.CDLL | None] = {}
_disabled = 0


class NativeBuildError(RuntimeError):
    """A compiled kernel could not be built or loaded while ``FEWSHOT_NATIVE=require``."""


def enabled() -> bool:
    """False inside :func:`disabled` or when ``FEWSHOT_NATIVE`` is ``0``; ``1``, ``require`` or unset: on.

    Raises:
        ValueError: ``FEWSHOT_NATIVE`` has another value.
    """
    value = os.environ.get("FEWSHOT_NATIVE", "1").strip().lower()
    if value not in {"0", "1", "require"}:
        raise ValueError(
            f"FEWSHOT_NATIVE must be 0 (compiled kernels off), 1 (on, the default) or require (on, and a failed "
            f"build is an error), got {value!r}"
        )
    return value != "0" and not _disabled


@contextmanager
def disabled() -> Iterator[None]:
    """Inside the block the layers use their torch implementations (tests and benchmarks compare the two)."""
    global _disabled
    _disabled += 1
    try:
        yield
    finally:
        _disabled -= 1


def cache_dir() -> Path:
    """Where compiled kernels are kept: ``$FEWSHOT_CACHE/native``, else ``~/.cache/fewshot/native``."""
    root = os.environ.get("FEWSHOT_CACHE")
    return (Path(root) if root else Path.home() / ".cache" / "fewshot") / "native"


def _cpu_flags() -> str:
    """The CPU's instruction-set flags (``-march=native`` depends on them); the machine name elsewhere."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


def _compiler() -> str | None:
    return shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")


def _build(name: str) -> Path:
    """Compile ``<name>.c`` into the cache (if not there yet) and return the library's path."""
    compiler = _compiler()
    if compiler is None:
        raise NativeBuildError(f"no C compiler found (looked for ${{CC}} or cc, then gcc) to build {name}.c")
    source = SOURCE_DIR / f"{name}.c"
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True, check=False).stdout
    key = hashlib.sha256("\0".join([source.read_text(), " ".join(FLAGS), version, _cpu_flags()]).encode())
    target = cache_dir() / f"{name}-{key.hexdigest()[:16]}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        built = Path(tmp) / target.name
        result = subprocess.run([compiler, *FLAGS, str(source), "-o", str(built)], capture_output=True, text=True)
        if result.returncode != 0:
            raise NativeBuildError(f"{compiler} could not build {source}:\n{result.stderr.strip()[-2000:]}")
        os.replace(built, target)
    return target


def _open(name: str) -> ctypes.CDLL:
    """Build (if needed) and load ``<name>``; a cached file that does not load (damaged) is rebuilt once."""
    path = _build(name)
    try:
        return ctypes.CDLL(str(path))
    except OSError:
        path.unlink(missing_ok=True)
        return ctypes.CDLL(str(_build(name)))


def load(name: str) -> ctypes.CDLL | None:
    """The compiled library ``<name>`` (built on first use), or ``None`` when off or unavailable (one warning).

    Raises:
        NativeBuildError: the build or the load failed and ``FEWSHOT_NATIVE=require``.
    """
    if not enabled():
        return None
    with _lock:
        if name not in _loaded:
            try:
                _loaded[name] = _open(name)
            except (NativeBuildError, OSError) as err:
                if os.environ.get("FEWSHOT_NATIVE", "").strip().lower() == "require":
                    raise NativeBuildError(
                        f"compiled kernel {name} is required (FEWSHOT_NATIVE=require): {err}"
                    ) from err
                warnings.warn(
                    f"fewshot: compiled kernel {name} unavailable, using the slower torch implementation ({err}); "
                    "install a C compiler (cc/gcc with OpenMP) or set FEWSHOT_NATIVE=0 to silence this",
                    RuntimeWarning,
                    stacklevel=2,
                )
                _loaded[name] = None
        return _loaded[name]
