"""Study grids: a YAML list of cells (an experiment config plus overrides) × seeds, and the runs they plan.

A grid file (``configs/study/<name>.yaml``)::

    name: omniglot_protonet                  # runs go to <runs root>/sweeps/<name>/<cell>/seed<seed>/
    config: protonet/omniglot_vinyals_1shot.yaml   # default experiment file of every cell (under configs/)
    set: [train.episodes=5000]               # overrides of every cell (applied first)
    seeds: [0]                               # default seeds
    cells:                                   # in file order; a lower priority runs earlier
      - {name: batchnorm, set: [norm=batchnorm], seeds: [0, 1, 2], priority: 0}
      - {name: layernorm, set: [norm=layernorm], priority: 1}
      - {name: pre_bn, config: classifier/miniimagenet_pretrain.yaml, evaluate: false}  # a training stage only
      - {name: fine_bn, config: protonet/miniimagenet_finetune.yaml, after: pre_bn}     # starts from pre_bn
      - {name: bn_maml, reuse: {0: results/runs/maml_omniglot_vinyals_5w1s/headline-bn}}  # an existing run
    evaluation:                              # the support-size sweep at meta-test (each cell may override keys)
      ways: [5, 20]
      shots: [1, 2, 3, 5, 10]
      queries: 5                             # the same number of queries per class at every K
      episodes: 600
      policies: [running, support, transductive]
    diagnostics:
      spectrum_every: 1000                   # training episodes between records of W's spectrum (0: never)
      whiteness_episodes: 20                 # test episodes per (way, K, policy) for whiteness/conditioning

A *cell* is one experiment (config + overrides); a *run* is a cell at one seed. A cell with ``after: OTHER``
is a second training stage: its run at seed ``s`` starts from the backbone of OTHER's run at seed ``s``
(``model.init_from`` is set to that run's folder) and is started only once that run is finished. OTHER must be
defined earlier in the file, with the same seeds and a priority no higher, so run order puts it first. A cell
with ``evaluate: false`` is trained only (e.g. a pre-training stage); its training episodes count in the
budget of the cells that start from it. A cell with ``reuse: {SEED: FOLDER}`` (a path relative to the project
root) takes that seed's run from an existing finished run of exactly its config instead of training it
(:mod:`fewshot.study.reuse` checks and copies it; the grid then evaluates it like any other). Every run has a
fixed folder (:attr:`PlannedRun.run_dir`), so a sweep stopped anywhere resumes where it left off, and each run is an
independent command (``sweep --grid FILE --only CELL/seedS``) that another machine can execute. Budgets are
training episodes: a cell whose resolved config has ``train.max_minutes`` set is refused, because a time budget
makes the result depend on the machine.

Run order: by ``(priority, position of the seed in the cell's seed list, cell position in the file)``, so all
priority-0 cells get their first seed before any gets its second: the most informative comparison is complete
first.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from fewshot.config.loader import configs_dir, load_config
from fewshot.config.schema import ExperimentConfig
from fewshot.errors import ConfigError
from fewshot.norms.policy import Policy
from fewshot.training.episode_sets import runs_root

__all__ = [
    "DiagnosticsSpec", "EvaluationSpec", "CellSpec", "GridSpec", "PlannedRun", "is_grid_file", "load_grid",
    "plan_runs", "select_runs",
]  # fmt: skip

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_GRID_KEYS = ("name", "config", "set", "seeds", "cells", "evaluation", "diagnostics")
_CELL_KEYS = ("name", "config", "set", "seeds", "priority", "evaluation", "after", "evaluate", "reuse")
_POLICIES = tuple(p.value for p in Policy)


@dataclass(frozen=True)
class EvaluationSpec:
    """The support-size sweep at meta-test: every (way, shot, policy) on ``episodes`` fixed episodes.

    ``queries`` is per class and the same at every shot, so accuracies at different K are comparable.
    """

    ways: tuple[int, ...] = (5,)
    shots: tuple[int, ...] = (1, 2, 3, 5, 10)
    queries: int = 15
    episodes: int = 600
    policies: tuple[str, ...] = ("running", "support", "transductive")

    def settings(self) -> list[tuple[int, int, str]]:
        """Every ``(way, shot, policy)`` in a fixed order (way, then shot, then policy); none without ways."""
        return [(w, k, p) for w in self.ways for k in self.shots for p in self.policies]


@dataclass(frozen=True)
class DiagnosticsSpec:
    """Whitening diagnostics: W's spectrum every ``spectrum_every`` training episodes (0: only at the end), and
    whiteness/conditioning at meta-test on the first ``whiteness_episodes`` episodes of each setting (0: none)."""

    spectrum_every: int = 0
    whiteness_episodes: int = 0


@dataclass(frozen=True)
class CellSpec:
    """One experiment of the grid: ``config`` + ``overrides`` trained at each of ``seeds``."""

    name: str
    config: Path | None
    overrides: tuple[str, ...]
    seeds: tuple[int, ...]
    priority: int
    position: int
    evaluation: EvaluationSpec
    after: str | None = None
    reuse: tuple[tuple[int, Path], ...] = ()


@dataclass(frozen=True)
class GridSpec:
    """A parsed grid file."""

    path: Path
    name: str
    cells: tuple[CellSpec, ...]
    diagnostics: DiagnosticsSpec = field(default_factory=DiagnosticsSpec)


@dataclass(frozen=True)
class PlannedRun:
    """One cell at one seed, with its resolved config and its fixed run folder.

    Attributes:
        cell: the cell.
        seed: the training seed.
        cfg: the resolved config (``seed`` and the grid's ``name`` applied).
        overrides: every override after the cell's config file, in order (what ``train`` would be given).
        run_dir: ``<runs root>/sweeps/<grid>/<cell>/seed<seed>``.
    """

    cell: CellSpec
    seed: int
    cfg: ExperimentConfig
    overrides: tuple[str, ...]
    run_dir: Path

    @property
    def key(self) -> str:
        """``<cell>/seed<seed>``: the run's name in ``--only`` and in the status table."""
        return f"{self.cell.name}/seed{self.seed}"

    @property
    def target_episodes(self) -> int:
        return self.cfg.train.episodes

    @property
    def reuse_from(self) -> Path | None:
        """The finished run this seed's run is taken from (the cell's ``reuse:``), or ``None``."""
        return dict(self.cell.reuse).get(self.seed)

    @property
    def after_dir(self) -> Path | None:
        """The folder of the run this one starts from (``after:``), or ``None``."""
        return None if self.cell.after is None else Path(self.cfg.model.init_from)


def is_grid_file(path: str | Path) -> bool:
    """Whether a YAML file is a study grid (a top-level ``cells:`` list) rather than an experiment config."""
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return False
    return isinstance(data, dict) and "cells" in data


def _check_keys(data: Mapping[str, Any], valid: Sequence[str], where: str) -> None:
    unknown = [k for k in data if k not in valid]
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; valid keys are {', '.join(valid)}")


def _int_list(value: Any, where: str, minimum: int) -> tuple[int, ...]:
    items = value if isinstance(value, list) else [value]
    if not items or any(isinstance(v, bool) or not isinstance(v, int) or v < minimum for v in items):
        raise ConfigError(f"{where} must be an integer >= {minimum} or a non-empty list of them, got {value!r}")
    if len(set(items)) != len(items):
        raise ConfigError(f"{where} lists a value twice: {value!r}")
    return tuple(items)


def _str_list(value: Any, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    items = value if isinstance(value, list) else [value]
    if any(not isinstance(v, str) for v in items):
        raise ConfigError(f"{where} must be a list of 'dotted.key=value' strings, got {value!r}")
    return tuple(items)


def _evaluation(data: Any, base: EvaluationSpec, where: str) -> EvaluationSpec:
    if data is None:
        return base
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must be a mapping (ways, shots, queries, episodes, policies), got {data!r}")
    _check_keys(data, ("ways", "shots", "queries", "episodes", "policies"), where)
    spec = EvaluationSpec(
        ways=_int_list(data["ways"], f"{where}.ways", 2) if "ways" in data else base.ways,
        shots=_int_list(data["shots"], f"{where}.shots", 1) if "shots" in data else base.shots,
        queries=_int_list(data["queries"], f"{where}.queries", 1)[0] if "queries" in data else base.queries,
        episodes=_int_list(data["episodes"], f"{where}.episodes", 1)[0] if "episodes" in data else base.episodes,
        policies=_str_list(data["policies"], f"{where}.policies") if "policies" in data else base.policies,
    )
    bad = [p for p in spec.policies if p not in _POLICIES]
    if bad or not spec.policies:
        raise ConfigError(f"{where}.policies must be a non-empty list of {', '.join(_POLICIES)}, got {bad or []}")
    return spec


def _reuse(value: Any, seeds: tuple[int, ...], after: str | None, where: str) -> tuple[tuple[int, Path], ...]:
    if value is None:
        return ()
    if not isinstance(value, dict) or not value:
        raise ConfigError(f"{where}: reuse must map seeds to run folders, e.g. {{0: results/runs/<name>/<run>}}")
    if after is not None:
        raise ConfigError(f"{where}: a second stage (after: {after!r}) cannot reuse a run; reuse the first stage's")
    pairs = []
    for seed, folder in value.items():
        if seed not in seeds or not isinstance(folder, str):
            raise ConfigError(
                f"{where}: reuse maps a seed of the cell ({list(seeds)}) to a run folder (a path relative to the "
                f"project root), got {seed!r}: {folder!r}"
            )
        path = Path(folder)
        pairs.append((seed, path if path.is_absolute() else configs_dir().parent / path))
    return tuple(pairs)


def _resolve_config(value: Any, where: str) -> Path | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ConfigError(f"{where} must be a path to an experiment file, got {value!r}")
    path = Path(value)
    for candidate in (path, configs_dir() / path):
        if candidate.is_file():
            return candidate.resolve()
    raise ConfigError(
        f"{where}: experiment file {value!r} not found (as given or under {configs_dir()}); give a path relative "
        "to configs/, e.g. protonet/omniglot_vinyals_1shot.yaml"
    )


def load_grid(path: str | Path) -> GridSpec:
    """Parse and check a grid file (see the module docstring).

    Raises:
        ConfigError: missing file, unknown keys, bad values, repeated cell names.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"grid file {str(path)!r} does not exist; grids live in configs/study/")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"grid file {str(path)!r} is not valid YAML: {exc}") from None
    where = f"grid {str(path)!r}"
    if not isinstance(data, dict) or not isinstance(data.get("cells"), list) or not data["cells"]:
        raise ConfigError(f"{where} must be a mapping with a non-empty 'cells:' list")
    _check_keys(data, _GRID_KEYS, where)
    name = data.get("name") or path.stem
    if not isinstance(name, str) or not _NAME.match(name):
        raise ConfigError(f"{where}: name must be letters, digits, '_', '-' or '.', got {name!r}")
    config = _resolve_config(data.get("config"), f"{where}: config")
    shared = _str_list(data.get("set"), f"{where}: set")
    seeds = _int_list(data.get("seeds", [0]), f"{where}: seeds", 0)
    evaluation = _evaluation(data.get("evaluation"), EvaluationSpec(), f"{where}: evaluation")
    diag = data.get("diagnostics") or {}
    if not isinstance(diag, dict):
        raise ConfigError(f"{where}: diagnostics must be a mapping (spectrum_every, whiteness_episodes)")
    _check_keys(diag, ("spectrum_every", "whiteness_episodes"), f"{where}: diagnostics")
    diagnostics = DiagnosticsSpec(
        spectrum_every=_int_list(diag.get("spectrum_every", 0), f"{where}: diagnostics.spectrum_every", 0)[0],
        whiteness_episodes=_int_list(diag.get("whiteness_episodes", 0), f"{where}: diagnostics.whiteness_episodes",
                                     0)[0],
    )  # fmt: skip
    cells = []
    for i, raw in enumerate(data["cells"]):
        cw = f"{where}: cells[{i}]"
        if not isinstance(raw, dict) or "name" not in raw:
            raise ConfigError(f"{cw} must be a mapping with at least a name, got {raw!r}")
        _check_keys(raw, _CELL_KEYS, cw)
        if not isinstance(raw["name"], str) or not _NAME.match(raw["name"]):
            raise ConfigError(f"{cw}: name must be letters, digits, '_', '-' or '.', got {raw['name']!r}")
        priority = raw.get("priority", 0)
        if isinstance(priority, bool) or not isinstance(priority, int):
            raise ConfigError(f"{cw}: priority must be an integer (lower runs first), got {priority!r}")
        cell_seeds = _int_list(raw["seeds"], f"{cw}: seeds", 0) if "seeds" in raw else seeds
        after = raw.get("after")
        if after is not None:
            earlier = {c.name: c for c in cells}
            if after not in earlier:
                raise ConfigError(
                    f"{cw}: after: {after!r} is not a cell defined earlier in the file; a second stage names the "
                    f"earlier cell it starts from (earlier cells: {', '.join(earlier) or 'none'})"
                )
            if earlier[after].seeds != cell_seeds or earlier[after].priority > priority:
                raise ConfigError(
                    f"{cw}: after: {after!r} needs the same seeds ({list(earlier[after].seeds)}) and a priority no "
                    f"higher than {priority}, so that its runs exist and run first"
                )
        evaluate = raw.get("evaluate", True)
        if not isinstance(evaluate, bool):
            raise ConfigError(f"{cw}: evaluate must be true or false, got {evaluate!r}")
        cell_eval = _evaluation(raw.get("evaluation"), evaluation, f"{cw}: evaluation")
        cells.append(
            CellSpec(
                name=raw["name"],
                config=_resolve_config(raw["config"], f"{cw}: config") if "config" in raw else config,
                overrides=shared + _str_list(raw.get("set"), f"{cw}: set"),
                seeds=cell_seeds,
                priority=priority,
                position=i,
                evaluation=cell_eval if evaluate else dataclasses.replace(cell_eval, ways=()),
                after=after,
                reuse=_reuse(raw.get("reuse"), cell_seeds, after, f"{cw}: reuse"),
            )
        )
    names = [c.name for c in cells]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ConfigError(f"{where}: cell names must be unique (they name the run folders), repeated: {repeated}")
    return GridSpec(path=path, name=name, cells=tuple(cells), diagnostics=diagnostics)


def plan_runs(grid: GridSpec, root: str | Path | None = None) -> list[PlannedRun]:
    """Every cell × seed of ``grid`` with its resolved config and run folder, in run order.

    Raises:
        ConfigError: a cell's config does not load, or it has a time budget (``train.max_minutes`` not null).
    """
    base = runs_root(root) / "sweeps" / grid.name
    runs = []
    for cell in grid.cells:
        for seed in cell.seeds:
            overrides = (*cell.overrides, f"seed={seed}", f"name={grid.name}_{cell.name}")
            if cell.after is not None:
                overrides = (*overrides, f"model.init_from={base / cell.after / f'seed{seed}'}")
            try:
                cfg = load_config(cell.config, overrides)
            except ConfigError as exc:
                raise ConfigError(f"grid {grid.name!r}, cell {cell.name!r}, seed {seed}: {exc}") from None
            if cfg.train.max_minutes is not None:
                raise ConfigError(
                    f"grid {grid.name!r}, cell {cell.name!r}: train.max_minutes is {cfg.train.max_minutes}; study "
                    "budgets are training episodes so that results do not depend on the machine: add "
                    "'train.max_minutes=null' to the grid's set: list and give train.episodes"
                )
            every = grid.diagnostics.spectrum_every
            if cfg.data.val_split is not None and every and every % cfg.train.val_every:
                raise ConfigError(
                    f"grid {grid.name!r}, cell {cell.name!r}: diagnostics.spectrum_every ({every}) must be a multiple "
                    f"of train.val_every ({cfg.train.val_every}): a training segment ends with a validation, and one "
                    "between the scheduled ones could change which checkpoint is best"
                )
            runs.append(PlannedRun(cell, seed, cfg, overrides, base / cell.name / f"seed{seed}"))
    return sorted(runs, key=lambda r: (r.cell.priority, r.cell.seeds.index(r.seed), r.cell.position))


def select_runs(runs: Sequence[PlannedRun], patterns: Sequence[str]) -> list[PlannedRun]:
    """The runs whose ``cell/seedS`` key or cell name matches any fnmatch pattern (all runs if none given).

    Raises:
        ConfigError: a pattern matches no run (the message lists the run keys).
    """
    if not patterns:
        return list(runs)
    chosen = []
    for pattern in patterns:
        hits = [r for r in runs if fnmatch.fnmatchcase(r.key, pattern) or fnmatch.fnmatchcase(r.cell.name, pattern)]
        if not hits:
            raise ConfigError(
                f"--only {pattern!r} matches no run of the grid; runs are named CELL/seedS: "
                f"{', '.join(r.key for r in runs)}"
            )
        chosen.extend(h for h in hits if h not in chosen)
    return [r for r in runs if r in chosen]
