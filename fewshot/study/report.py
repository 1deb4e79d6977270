"""The study's outputs from the runs of one or more grids: table CSVs, plots and the generated findings.

Files (under ``--out-dir``, ``results/`` by default; each CSV starts with ``# command: ...``):

* ``study.csv``: one row per cell × test way × test shot K × policy: learner, backbone, norm (with options),
  dataset, way, shot, query, train_shot, train_episodes, train_minutes (mean wall time per seed), policy,
  pretrain_episodes, pretrain_minutes and pretrain_learner (the first stage of a two-stage cell, ``after:``; its
  episodes are batches when its learner is ``classifier``; 0 and ``""`` for one stage),
  n_seeds, seeds, episodes, mean, ci95, ci_low, ci_high, diff_to_bn, diff_ci95, diff_low, diff_high,
  n_paired_seeds, paired_seeds, reference_seeds, reference. Accuracies in percent; seed lists as ``"0 1 2"``.
  ``mean`` is the mean over seeds of the per-seed mean accuracy on the same fixed episodes, its interval
  ``[ci_low, ci_high]`` that of :func:`fewshot.evaluation.stats.hierarchical_bootstrap` (seeds and one episode
  draw shared by them, 10,000 resamples, seed 0; for two or more seeds widened to contain the t-interval of
  :func:`fewshot.evaluation.stats.crossed_t_interval`) and ``ci95`` that interval's half-width
  ``(ci_high − ci_low)/2`` (the interval need not be symmetric about ``mean``; elsewhere in the project ``ci95``
  is ``1.96·s/√n``, which it matches for one seed); ``diff_to_bn`` the same for the per-episode differences to
  the grid's reference cell (its first evaluated ``batchnorm`` cell without options; the first evaluated cell of
  a grid without one, named in ``reference``) over the seeds both have (``paired_seeds``; the reference's own
  in ``reference_seeds``), paired on identical episodes. With one seed (``n_seeds``, ``n_paired_seeds`` = 1) the
  interval holds episode noise only: seed-to-seed variation is not estimated.
* ``study_pairs.csv``: the same differences per seed (:func:`fewshot.evaluation.stats.paired_comparison`:
  mean, 1.96·s/√n CI, paired t and sign-flip p-values printed to 6 significant digits, wins/ties/losses; the
  p-values are per row, not corrected for the many rows).
* ``study_whiteness.csv``: the meta-test diagnostics of every run (``diagnostics/whiteness.csv``), averaged
  over seeds; ``study_spectrum.csv``: the W spectra over training of every run.
* ``study_accuracy_vs_k.png``, ``study_diff_vs_k.png``, ``study_w_spectrum.png``; ``FINDINGS.md``.

Only runs that finished training count; missing evaluations are simply absent (``n_seeds`` says how many). The
seeds of one cell must have trained the same number of episodes (and first-stage episodes): a cell is never
split into rows of different budgets.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from fewshot.errors import ConfigError, DataError
from fewshot.evaluation.outputs import EVAL_DIR, atomic_write_text, read_episode_accuracies
from fewshot.evaluation.stats import exact_mean_difference, hierarchical_bootstrap, paired_comparison
from fewshot.provenance import command_line
from fewshot.registry import option_label
from fewshot.study.grid import GridSpec, PlannedRun, plan_runs
from fewshot.study.spectrum import SPECTRUM_FILE
from fewshot.study.status import run_status
from fewshot.study.whiteness import WHITENESS_FILE
from fewshot.training.run_dir import read_json

__all__ = ["OUTPUTS", "collect", "study_table", "write_report"]

OUTPUTS = (
    "study.csv", "study_pairs.csv", "study_whiteness.csv", "study_spectrum.csv", "study_accuracy_vs_k.png",
    "study_diff_vs_k.png", "study_w_spectrum.png", "FINDINGS.md",
)  # fmt: skip
_CELL = ["grid", "cell", "learner", "backbone", "norm", "dataset", "train_shot"]
_SETTING = ["way", "shot", "query", "policy"]
N_RESAMPLES = 10_000
_P_VALUES = ("p_t", "p_perm")


def _reference(grid: GridSpec, runs: Sequence[PlannedRun]) -> str:
    """The first evaluated plain BN cell (a pre-training stage is not evaluated), else the first evaluated cell."""
    evaluated = [run for run in runs if run.cell.evaluation.settings()]
    for run in evaluated:
        if run.cfg.model.norm == "batchnorm" and not run.cfg.model.norm_kwargs:
            return run.cell.name
    return evaluated[0].cell.name if evaluated else grid.cells[0].name


def collect(grids: Sequence[GridSpec], runs_root: str | Path | None = None) -> tuple[pd.DataFrame, dict[str, str]]:
    """Per-episode accuracies of every finished run's sweep evaluations: one row per (run, way, K, policy).

    Returns the frame (column ``acc`` holds the ``(n,)`` array, ``episode_hash`` the file it came from) and the
    reference cell of each grid.
    """
    rows, references = [], {}
    for grid in grids:
        runs = plan_runs(grid, runs_root)
        references[grid.name] = _reference(grid, runs)
        by_key = {(run.cell.name, run.seed): run for run in runs}
        for run in runs:
            status = run_status(run)
            if status.state != "finished":
                continue
            cfg, spec = run.cfg, run.cell.evaluation
            first = None if run.cell.after is None else run_status(by_key[(run.cell.after, run.seed)])
            wanted = {(w, k, spec.queries, spec.episodes, p) for w, k, p in spec.settings()}
            for summary_path in sorted((run.run_dir / EVAL_DIR).glob("*/summary.json")):
                s = read_json(summary_path)
                if (
                    s.get("checkpoint") != "best"
                    or (s["way"], s["shot"], s["query"], s["n"], s["policy"]) not in wanted
                ):
                    continue
                rows.append({
                    "grid": grid.name, "cell": run.cell.name, "seed": run.seed, "learner": cfg.learner.name,
                    "backbone": cfg.model.backbone, "norm": option_label(cfg.model.norm, cfg.model.norm_kwargs),
                    "dataset": cfg.data.dataset, "train_shot": cfg.train.n_shot, "train_episodes": status.episodes_done,
                    "train_minutes": status.minutes,
                    "pretrain_episodes": 0 if first is None else first.episodes_done,
                    "pretrain_minutes": 0.0 if first is None else first.minutes,
                    "pretrain_learner": "" if first is None else first.run.cfg.learner.name,
                    "way": s["way"], "shot": s["shot"], "query": s["query"], "policy": s["policy"],
                    "episode_hash": s["episode_hash"], "acc": read_episode_accuracies(summary_path.parent),
                })  # fmt: skip
    return pd.DataFrame(rows), references


def _stack(group: pd.DataFrame, where: str) -> tuple[list[int], np.ndarray]:
    if group["episode_hash"].nunique() != 1:
        raise DataError(f"{where}: seeds were evaluated on different episode files; re-run the sweep's evaluation")
    for column in ("train_episodes", "pretrain_episodes"):
        if group[column].nunique() != 1:
            done = ", ".join(f"seed {s}: {e}" for s, e in zip(group["seed"], group[column], strict=True))
            raise DataError(
                f"{where}: its seeds trained different numbers of episodes ({column}: {done}), so they are not "
                "one cell; give every seed the same episode budget (train.episodes, no train.max_minutes) and resume"
            )
    group = group.sort_values("seed")
    return group["seed"].tolist(), np.stack(group["acc"].tolist())


def study_table(frame: pd.DataFrame, references: dict[str, str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(study table, per-seed pairs) from :func:`collect`'s frame (see the module docstring for the columns)."""
    table, pairs = [], []
    if frame.empty:
        return pd.DataFrame(), pd.DataFrame()
    for key, group in frame.groupby(_CELL + _SETTING, sort=False):
        info = dict(zip(_CELL + _SETTING, key, strict=True))
        where = f"{info['grid']}/{info['cell']} {info['way']}-way {info['shot']}-shot {info['policy']}"
        seeds, acc = _stack(group, where)
        cell = {**{k: info[k] for k in _CELL}, "train_episodes": int(group["train_episodes"].iloc[0]),
                **{k: info[k] for k in _SETTING}}  # fmt: skip
        ci = hierarchical_bootstrap(acc, n_resamples=N_RESAMPLES, seed=0)
        ref_cell = references[info["grid"]]
        ref = frame[(frame["grid"] == info["grid"]) & (frame["cell"] == ref_cell)]
        ref = ref[(ref[_SETTING] == pd.Series(info)[_SETTING]).all(axis=1)]
        diff = {"diff_to_bn": math.nan, "diff_ci95": math.nan, "diff_low": math.nan, "diff_high": math.nan,
                "n_paired_seeds": 0, "paired_seeds": "", "reference_seeds": ""}  # fmt: skip
        if not ref.empty and ref_cell != info["cell"]:
            ref_seeds, ref_acc = _stack(ref, f"{info['grid']}/{ref_cell}")
            if ref["episode_hash"].iloc[0] != group["episode_hash"].iloc[0]:
                raise DataError(f"{where}: evaluated on other episodes than the reference {ref_cell!r}")
            shared = [s for s in seeds if s in ref_seeds]
            diff["reference_seeds"] = _seed_list(ref_seeds)
            if shared:
                ref_shared = np.stack([ref_acc[ref_seeds.index(s)] for s in shared])
                own_shared = np.stack([acc[seeds.index(s)] for s in shared])
                dci = hierarchical_bootstrap(own_shared - ref_shared, n_resamples=N_RESAMPLES, seed=0)
                exact = exact_mean_difference(ref_shared.ravel(), own_shared.ravel())  # dci.mean without residue
                diff = {"diff_to_bn": 100 * exact, "diff_ci95": 100 * dci.ci95, "diff_low": 100 * dci.low,
                        "diff_high": 100 * dci.high, "n_paired_seeds": len(shared), "paired_seeds": _seed_list(shared),
                        "reference_seeds": _seed_list(ref_seeds)}  # fmt: skip
                for s in shared:
                    p = paired_comparison(ref_acc[ref_seeds.index(s)], acc[seeds.index(s)])
                    pairs.append({**cell, "reference": ref_cell, "seed": s, "diff": 100 * p.mean_diff,
                                  "diff_ci95": 100 * p.ci95_diff, "p_t": p.p_t, "p_perm": p.p_perm, "wins": p.wins,
                                  "ties": p.ties, "losses": p.losses, "episodes": p.n})  # fmt: skip
        table.append({
            **info, "train_episodes": int(group["train_episodes"].iloc[0]),
            "train_minutes": float(group["train_minutes"].mean()),
            "pretrain_episodes": int(group["pretrain_episodes"].iloc[0]),
            "pretrain_minutes": float(group["pretrain_minutes"].mean()),
            "pretrain_learner": str(group["pretrain_learner"].iloc[0]),
            "n_seeds": len(seeds), "seeds": _seed_list(seeds), "episodes": acc.shape[1],
            "mean": 100 * ci.mean, "ci95": 100 * ci.ci95, "ci_low": 100 * ci.low, "ci_high": 100 * ci.high, **diff,
            "reference": ref_cell,
        })  # fmt: skip
    return _in_order(pd.DataFrame(table)), _in_order(pd.DataFrame(pairs))


def _seed_list(seeds: Sequence[int]) -> str:
    """Seeds as the table writes them: ``"0 1 2"`` (a string, so that one seed is not read back as a number)."""
    return " ".join(str(int(s)) for s in seeds)


def _in_order(frame: pd.DataFrame) -> pd.DataFrame:
    """Rows by cell (in the grid's order), then way, shot and policy."""
    if frame.empty:
        return frame
    cell = frame.groupby(["grid", "cell"], sort=False).ngroup().rename("_cell")
    order = pd.concat([cell, frame[["way", "shot", "policy"]]], axis=1)
    index = order.sort_values(["_cell", "way", "shot", "policy"], kind="stable").index
    return frame.loc[index].reset_index(drop=True)


def _diagnostics(grids: Sequence[GridSpec], runs_root: str | Path | None) -> tuple[pd.DataFrame, pd.DataFrame]:
    white, spectra = [], []
    for grid in grids:
        for run in plan_runs(grid, runs_root):
            norm = option_label(run.cfg.model.norm, run.cfg.model.norm_kwargs)
            label = {"grid": grid.name, "cell": run.cell.name, "seed": run.seed, "norm": norm,
                     "dataset": run.cfg.data.dataset}  # fmt: skip
            if (run.run_dir / WHITENESS_FILE).is_file():
                white.append(pd.read_csv(run.run_dir / WHITENESS_FILE).assign(**label))
            if (run.run_dir / SPECTRUM_FILE).is_file():
                spectra.append(pd.read_csv(run.run_dir / SPECTRUM_FILE).assign(**label))
    w = pd.concat(white, ignore_index=True) if white else pd.DataFrame()
    if not w.empty:
        keys = ["grid", "cell", "norm", "dataset", "way", "shot", "query", "policy", "layer"]
        w = w.groupby(keys, sort=False).agg(
            n_seeds=("seed", "nunique"), cov_error=("cov_error", "mean"), corr_error=("corr_error", "mean"),
            support_cond=("support_cond", "median"), cond_dim=("cond_dim", "first"),
        ).reset_index()  # fmt: skip
    return w, (pd.concat(spectra, ignore_index=True) if spectra else pd.DataFrame())


def _csv(frame: pd.DataFrame, command: str) -> str:
    """The CSV text: floats to 4 decimals, p-values to 6 significant digits (a p of 5e-05 is not 0.0000)."""
    frame = frame.copy()
    for column in _P_VALUES:
        if column in frame:
            frame[column] = frame[column].map(lambda p: "" if pd.isna(p) else f"{p:.6g}")
    return f"# command: {command}\n" + frame.to_csv(index=False, float_format="%.4f", lineterminator="\n")


def write_report(
    grids: Sequence[GridSpec], out_dir: str | Path, *, runs_root: str | Path | None = None, force: bool = False
) -> list[Path]:
    """Write every file of :data:`OUTPUTS` into ``out_dir`` (existing ones only with ``force``).

    Raises:
        ConfigError: an output exists and ``force`` is off, or no run of the grids has finished and been evaluated.
    """
    from fewshot.study.findings import findings_markdown
    from fewshot.study.plots import plot_accuracy_vs_k, plot_diff_vs_k, plot_w_spectra

    out = Path(out_dir)
    existing = [out / name for name in OUTPUTS if (out / name).exists()]
    if existing and not force:
        raise ConfigError(
            f"refusing to overwrite {', '.join(map(str, existing))}; pass --force to regenerate them, or --out-dir"
        )
    frame, references = collect(grids, runs_root)
    if frame.empty:
        raise ConfigError(
            f"no finished and evaluated run in grid(s) {', '.join(g.name for g in grids)}; run `sweep --grid ...` "
            "first (see `sweep status`)"
        )
    table, pairs = study_table(frame, references)
    white, spectra = _diagnostics(grids, runs_root)
    command = command_line()
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, data in (("study.csv", table), ("study_pairs.csv", pairs), ("study_whiteness.csv", white),
                       ("study_spectrum.csv", spectra)):  # fmt: skip
        atomic_write_text(out / name, _csv(data, command))
        written.append(out / name)
    written.append(plot_accuracy_vs_k(table, out / "study_accuracy_vs_k.png"))
    written.append(plot_diff_vs_k(table, out / "study_diff_vs_k.png"))
    written.append(plot_w_spectra(spectra, out / "study_w_spectrum.png"))
    atomic_write_text(out / "FINDINGS.md", findings_markdown(table, white, grids, command))
    written.append(out / "FINDINGS.md")
    return written
