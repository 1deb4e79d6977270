"""Results tables: run directories → one pandas DataFrame → CSV, Markdown or LaTeX.

One row per evaluation found under ``<run>/eval/*/summary.json``; a run without any evaluation still gets a
row, with its accuracy cells left visibly empty, so nothing silently drops out of a table; an evaluation whose
summary cannot be read is an error, not a missing row. A run's checkpoints are verified (SHA-256, and
``config.yaml`` against the config they were trained with) before its row is made. Columns
(:data:`COLUMNS`, fixed, in this order):

============== ==========================================================================================
learner        learner registry name (``protonet``, ``maml``)
backbone       backbone registry name (``conv4``, ...)
norm           normalization layer registry name and its options (``batchnorm``, ``swbn[shrinkage=0.1]``)
dataset        dataset registry name
protocol       dataset protocol (``vinyals``, ``lake``, ``ravi``, ...)
way            classes per test episode (N)
shot           support images per class at test time (K)
query          query images per class at test time
policy         test-time normalization statistics policy (``running``, ``support``, ``transductive``)
mean           mean of per-episode test accuracies, in percent
ci95           half-width of the 95% CI of ``mean`` (1.96·std/√n, std with ddof=1), in percent
episodes       number of test episodes (n)
seed           seed of the fixed test-episode file
train_episodes training episodes actually done
train_minutes  training wall time in minutes (validation and checkpointing included)
status         how training ended: ``finished``, ``stopped_budget``, ``interrupted`` (Ctrl-C, SIGTERM, or a process
               that died while ``running``), ``failed``, or ``running`` (its process holds the run lock now)
run            the run's path under its runs root: ``<experiment>/<run>``
               (``maml_omniglot_vinyals_5w1s/headline-bn``; run names repeat across experiments), or
               ``sweeps/<grid>/<cell>/seed<s>`` for a study run
============== ==========================================================================================

Markdown tables in the README are generated from these frames (``run_episode.py table --format md``) and never
edited by hand. Markdown needs no extra package (pandas' ``to_markdown`` would need ``tabulate``).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from fewshot.errors import DataError
from fewshot.evaluation.outputs import list_evals
from fewshot.registry import option_label

__all__ = [
    "COLUMNS", "FORMATS", "find_runs", "load_run_info", "runs_table", "format_table", "to_markdown", "to_latex",
]  # fmt: skip

COLUMNS = (
    "learner", "backbone", "norm", "dataset", "protocol", "way", "shot", "query", "policy",
    "mean", "ci95", "episodes", "seed", "train_episodes", "train_minutes", "status", "run",
)  # fmt: skip
FORMATS = ("md", "csv", "latex")
_SORT = ["dataset", "protocol", "way", "shot", "learner", "backbone", "norm", "policy", "run"]
_EMPTY = "–"  # how Markdown and LaTeX show a missing value


def find_runs(paths: Iterable[str | Path]) -> list[Path]:
    """Run directories named by ``paths``: a folder with ``config.yaml`` is a run; any other folder stands for
    the runs below it (up to two levels, e.g. ``runs/study/<time>/`` or ``runs/<name>/``), in name order.

    Raises:
        DataError: a path does not exist or holds no run.
    """
    found: list[Path] = []
    for p in map(Path, paths):
        if (p / "config.yaml").is_file():
            found.append(p)
            continue
        if not p.is_dir():
            raise DataError(f"{str(p)!r} does not exist; pass run directories written by `run_episode.py train`")
        below = sorted({c.parent for pattern in ("*/config.yaml", "*/*/config.yaml") for c in p.glob(pattern)})
        if not below:
            raise DataError(
                f"{str(p)!r} is not a run directory (no config.yaml) and holds no run directories below it; pass "
                "folders written by `run_episode.py train`"
            )
        found.extend(below)
    unique: list[Path] = []
    for p in found:
        if p.resolve() not in {q.resolve() for q in unique}:
            unique.append(p)
    return unique


def load_run_info(run_dir: str | Path) -> dict[str, Any]:
    """The resolved config (``config.yaml``) and ``metrics.json`` of a run, as plain dicts.

    Raises:
        DataError: ``run_dir`` is not a run directory (no ``config.yaml``), the YAML or ``metrics.json`` is
            unreadable, or a checkpoint is damaged or disagrees with ``config.yaml``.
    """
    from fewshot.training.run_dir import verify_run

    run = Path(run_dir)
    cfg_path = run / "config.yaml"
    if not cfg_path.is_file():
        raise DataError(
            f"{str(run)!r} is not a run directory: it has no config.yaml; pass folders written by "
            "`run_episode.py train` (e.g. runs/<name>/<UTC time>-<sha>)"
        )
    try:
        cfg = yaml.safe_load(cfg_path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise DataError(f"cannot read {str(cfg_path)!r}: {exc}") from None
    if not isinstance(cfg, dict):
        raise DataError(f"{str(cfg_path)!r} should hold a mapping of config sections, got {type(cfg).__name__}")
    if any((run / "checkpoints").glob("*.pt")):  # archived runs keep no checkpoint: nothing to verify
        verify_run(run)
    metrics: dict[str, Any] = {}
    metrics_path = run / "metrics.json"
    if metrics_path.is_file():
        try:
            metrics = json.loads(metrics_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise DataError(
                f"cannot read {str(metrics_path)!r} ({exc}); it was damaged or edited: restore it, or resume the run "
                "(`run_episode.py train --resume RUN`) to write it again"
            ) from None
    return {"config": cfg, "metrics": metrics if isinstance(metrics, dict) else {}}


def _get(cfg: dict, dotted: str) -> Any:
    value: Any = cfg
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def run_status(run_dir: str | Path, metrics: dict[str, Any]) -> str:
    """The ``status`` column: ``metrics.json``'s status, with a ``running`` run whose process is gone shown as
    ``interrupted`` (killed: resume it with ``--resume``)."""
    from fewshot.training.run_dir import lock_held

    status = metrics.get("status") or "unknown"
    return "interrupted" if status == "running" and not lock_held(run_dir) else str(status)


def run_label(run: Path) -> str:
    """The run's path under its runs root: ``sweeps/<grid>/<cell>/seed<s>`` for a study run, else
    ``<experiment>/<run>`` (see the ``run`` column)."""
    parts = run.parts
    return "/".join(parts[-4:] if len(parts) >= 4 and parts[-4] == "sweeps" else parts[-2:])


def _percent(value: Any) -> float:
    return math.nan if value is None else 100.0 * float(value)


def runs_table(run_dirs: Iterable[str | Path]) -> pd.DataFrame:
    """One row per (run, evaluation); see the module docstring for the columns.

    Args:
        run_dirs: run directories; a run without evaluations gets one row with empty accuracy cells.

    Returns:
        A DataFrame with exactly :data:`COLUMNS`, sorted by dataset, protocol, way, shot, learner, backbone,
        norm, policy and run.
    """
    rows = []
    for run_dir in run_dirs:
        run = Path(run_dir)
        info = load_run_info(run)
        cfg, metrics = info["config"], info["metrics"]
        seconds = metrics.get("train_seconds")
        base = {
            "learner": _get(cfg, "learner.name"),
            "backbone": _get(cfg, "model.backbone"),
            "norm": option_label(_get(cfg, "model.norm"), _get(cfg, "model.norm_kwargs")),
            "dataset": _get(cfg, "data.dataset"),
            "protocol": _get(cfg, "data.protocol"),
            "train_episodes": metrics.get("episodes_done"),
            "train_minutes": None if seconds is None else round(float(seconds) / 60.0, 2),
            "status": run_status(run, metrics),
            "run": run_label(run),
        }
        evals = list_evals(run)
        if not evals:
            rows.append({**base, "policy": _get(cfg, "eval.norm_policy")})
        for s in evals:
            rows.append(
                {
                    **base,
                    "dataset": s.get("dataset", base["dataset"]),
                    "protocol": s.get("protocol", base["protocol"]),
                    "way": s.get("way"),
                    "shot": s.get("shot"),
                    "query": s.get("query"),
                    "policy": s.get("policy"),
                    "mean": _percent(s.get("mean")),
                    "ci95": _percent(s.get("ci95")),
                    "episodes": s.get("n"),
                    "seed": s.get("seed"),
                }
            )
    frame = pd.DataFrame(rows, columns=list(COLUMNS))
    for col in ("way", "shot", "query", "episodes", "seed", "train_episodes"):
        frame[col] = frame[col].astype("Int64")
    for col in ("mean", "ci95", "train_minutes"):
        frame[col] = frame[col].astype("float64")
    return frame.sort_values(_SORT, na_position="last", kind="stable").reset_index(drop=True)


def _cell(value: Any, column: str) -> str:
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return _EMPTY
    if column in ("mean", "ci95"):
        return f"{float(value):.2f}"
    if column == "train_minutes":
        return f"{float(value):.1f}"
    return str(value)


def to_markdown(frame: pd.DataFrame, columns: Sequence[str] | None = None) -> str:
    """A GitHub-flavoured Markdown table (numbers right-aligned; accuracies with 2 decimals, in percent)."""
    columns = list(columns or frame.columns)
    numeric = {c for c in columns if pd.api.types.is_numeric_dtype(frame[c])}
    head = "| " + " | ".join(columns) + " |"
    rule = "|" + "|".join("---:" if c in numeric else "---" for c in columns) + "|"
    body = [
        "| " + " | ".join(_cell(row[c], c).replace("|", "\\|") for c in columns) + " |" for _, row in frame.iterrows()
    ]
    return "\n".join([head, rule, *body]) + "\n"


_LATEX_SPECIAL = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
    "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
}  # fmt: skip
_LATEX_RE = re.compile("|".join(re.escape(c) for c in _LATEX_SPECIAL))


def _latex_escape(text: str) -> str:
    return _LATEX_RE.sub(lambda m: _LATEX_SPECIAL[m.group(0)], text)


def to_latex(frame: pd.DataFrame, columns: Sequence[str] | None = None) -> str:
    """A booktabs ``tabular`` (needs ``\\usepackage{booktabs}``); missing values shown as an en dash."""
    columns = list(columns or frame.columns)
    numeric = {c for c in columns if pd.api.types.is_numeric_dtype(frame[c])}
    spec = "".join("r" if c in numeric else "l" for c in columns)
    lines = [f"\\begin{{tabular}}{{{spec}}}", r"\toprule", " & ".join(_latex_escape(c) for c in columns) + r" \\"]
    lines.append(r"\midrule")
    for _, row in frame.iterrows():
        cells = [_cell(row[c], c) for c in columns]
        lines.append(" & ".join("--" if v == _EMPTY else _latex_escape(v) for v in cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


def format_table(frame: pd.DataFrame, fmt: str) -> str:
    """Render ``frame`` as ``md``, ``csv`` (full precision, empty cells for missing values) or ``latex``."""
    if fmt == "md":
        return to_markdown(frame)
    if fmt == "csv":
        return frame.to_csv(index=False, float_format="%.4f")
    if fmt == "latex":
        return to_latex(frame)
    raise ValueError(f"unknown table format {fmt!r}; expected one of {', '.join(FORMATS)}")
