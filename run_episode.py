#!/usr/bin/env python
"""Command-line entry point of fewshot: data, episodes, norms, training, evaluation and reports.

Run ``python run_episode.py --help`` for the subcommands. Every subcommand lives in its own module under
``fewshot/cli/``; this file only dispatches. Exit codes: 0 success, 2 bad input (config, data, names),
1 anything else.

glibc reads its malloc tunables once, at process start, so they cannot be set from inside Python. Unless
``GLIBC_TUNABLES`` is already set (or ``FEWSHOT_NO_REEXEC=1``), this launcher re-executes itself once with
the tunables of ``../shared/docs/cpu-performance.md`` (no mmap/munmap of large activations on every step:
1.4-1.9x faster training steps on these machines, at up to twice the peak memory).
"""

import os
import sys

MALLOC_TUNABLES = "glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=17179869184:glibc.malloc.top_pad=1073741824"


def _reexec_with_malloc_tunables() -> None:
    if os.environ.get("GLIBC_TUNABLES") or os.environ.get("FEWSHOT_NO_REEXEC") == "1":
        return
    if not sys.platform.startswith("linux"):
        return
    env = dict(os.environ, GLIBC_TUNABLES=MALLOC_TUNABLES)
    os.execve(sys.executable, [sys.executable, os.path.abspath(__file__), *sys.argv[1:]], env)


if __name__ == "__main__":
    _reexec_with_malloc_tunables()
    from fewshot.cli.main import main

    sys.exit(main())
