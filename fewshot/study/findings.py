"""The generated Findings section (Markdown, one screen) from the study table and the whitening diagnostics.

Headline setting of each grid: its smallest test way, the smallest K and the ``support`` policy (statistics from
the K·N support images alone: the regime the study is about; the first policy in the table when ``support`` was
not evaluated). One answer line per grid; the three numbers, the whitening diagnostics and the plot are the first
grid's. Every number comes from the study table (``study.csv``, written from the same frame) and the whitening
diagnostics (``study_whiteness.csv``); nothing is typed by hand. A verdict reads the difference's 95% interval
(no pooled p-value: the per-seed tests are in ``study_pairs.csv``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd

from fewshot.study.grid import GridSpec

__all__ = ["verdict", "findings_markdown"]


def _first_stage(table: pd.DataFrame) -> str:
    """``", after a first stage of ..."`` for two-stage cells (``pretrain_episodes`` > 0), else ``""``: a
    classifier's first stage counts batches, an episodic one episodes."""
    if "pretrain_episodes" not in table:
        return ""
    staged = table[table["pretrain_episodes"] > 0]
    if staged.empty:
        return ""
    budgets = ", ".join(str(int(e)) for e in sorted(set(staged["pretrain_episodes"])))
    learners = set(staged["pretrain_learner"].fillna("")) if "pretrain_learner" in staged else set()
    if learners == {"classifier"}:
        unit = "classifier batches"
    elif "classifier" in learners:
        unit = "steps (classifier batches or episodes)"
    else:
        unit = "episodes"
    lo, hi = staged["pretrain_minutes"].min(), staged["pretrain_minutes"].max()
    return f", after a first stage of {budgets} {unit} ({lo:.0f}-{hi:.0f} min)"


# Interval bounds within this many points of 0 count as 0: per-episode differences are multiples of 1/(way·query),
# so a bootstrap quantile that is 0 in exact arithmetic can come out as -1.9e-17 (the CSV then prints -0.0000).
ZERO_TOL = 1e-9


def verdict(row: pd.Series) -> str:
    """``better than``/``worse than``/``not distinguishable from`` the reference from the 95% interval of the
    difference (with one paired seed an interval over test episodes only: a verdict on that training seed)."""
    if row["diff_low"] > ZERO_TOL:
        return "better than"
    if row["diff_high"] < -ZERO_TOL:
        return "worse than"
    return "not distinguishable from"


def _seeds(text: object) -> list[str]:
    """The seeds of a ``seeds``/``paired_seeds`` cell (``"0 1 2"``; a lone seed may have been read as a number)."""
    if text is None or (isinstance(text, float) and math.isnan(text)):
        return []
    return str(text).split()


def _interval(row: pd.Series) -> str:
    return f"{row['diff_to_bn']:+.2f} points [{row['diff_low']:+.2f}, {row['diff_high']:+.2f}]"


def _diff(row: pd.Series) -> str:
    seeds = int(row["n_paired_seeds"])
    basis = "1 paired seed: test episodes only" if seeds == 1 else f"{seeds} paired seeds and their episodes"
    return f"{_interval(row)} ({basis})"


def _left_out(row: pd.Series, ref_name: str) -> str:
    """``"; BN's seeds 1, 2 have no partner yet"`` when the reference or the cell has seeds the other lacks."""
    paired = set(_seeds(row.get("paired_seeds")))
    parts = []
    for name, seeds in ((ref_name, _seeds(row.get("reference_seeds"))), (f"`{row['norm']}`", _seeds(row.get("seeds")))):
        alone = [s for s in seeds if s not in paired]
        if alone:
            parts.append(f"{name}'s seed{'s' if len(alone) > 1 else ''} {', '.join(alone)} unpaired")
    return f"; {' and '.join(parts)}" if parts else ""


@dataclass(frozen=True)
class _Headline:
    """One grid's headline setting: its rows there, the K range, and the reference cell."""

    grid: str
    rows: pd.DataFrame
    dataset: str
    learner: str
    way: int
    policy: str
    k_min: int
    k_max: int
    ref: str
    ref_name: str
    table: pd.DataFrame


def _headline(table: pd.DataFrame, grid: str) -> _Headline:
    sub = table[table["grid"] == grid]
    way = int(sub["way"].min())
    sub = sub[sub["way"] == way]
    policy = "support" if "support" in set(sub["policy"]) else sub["policy"].iloc[0]
    sub = sub[sub["policy"] == policy]
    ref = sub["reference"].iloc[0]
    ref_rows = sub[sub["cell"] == ref]
    norm = ref_rows["norm"].iloc[0] if not ref_rows.empty else "batchnorm"
    ref_name = "BN" if norm == "batchnorm" else f"`{norm}`"
    learner = sub.loc[sub["cell"] != ref, "learner"] if (sub["cell"] != ref).any() else sub["learner"]
    return _Headline(grid, sub, sub["dataset"].iloc[0], learner.iloc[0], way, policy, int(sub["shot"].min()),
                     int(sub["shot"].max()), ref, ref_name, table)  # fmt: skip


def _compared(h: _Headline) -> pd.DataFrame:
    return h.rows[h.rows["cell"] != h.ref].dropna(subset=["diff_to_bn"])


def _claim(r: pd.Series, h: _Headline) -> str:
    """One SWBN setting's verdict at the headline point; with one paired seed a claim about that seed only."""
    seeds = _seeds(r.get("paired_seeds"))
    if int(r["n_paired_seeds"]) == 1 and seeds:
        return f"`{r['norm']}` seed {seeds[0]} is {verdict(r)} {h.ref_name} seed {seeds[0]}"
    return f"`{r['norm']}` is {verdict(r)} {h.ref_name}"


def _other_policies(h: _Headline, r: pd.Series) -> str:
    """``"; `running` −0.49 [...], `transductive` −1.05 [...]"``: the same cell and K under the other policies."""
    t = h.table
    rows = t[(t["grid"] == h.grid) & (t["cell"] == r["cell"]) & (t["way"] == h.way) & (t["shot"] == h.k_min)
             & (t["policy"] != h.policy)].dropna(subset=["diff_to_bn"])  # fmt: skip
    return "".join(f"; `{o['policy']}` {_interval(o)}" for _, o in rows.iterrows())


def _answer(h: _Headline) -> str:
    at_min = _compared(h)
    at_min = at_min[at_min["shot"] == h.k_min]
    swbn = at_min[at_min["norm"].str.startswith("swbn")]
    verdicts = "; ".join(
        f"{_claim(r, h)} ({_diff(r)}{_other_policies(h, r)}{_left_out(r, h.ref_name)})" for _, r in swbn.iterrows()
    )
    if at_min.empty and (h.rows["cell"] == h.ref).any():
        verdicts = f"no paired comparison yet ({h.ref_name} is finished; no other cell has a finished seed)"
    elif at_min.empty:
        verdicts = f"no paired comparison yet ({h.ref_name}, the reference, has no finished seed)"
    elif swbn.empty:
        verdicts = "no SWBN cell has a finished, paired seed yet"
    return f"{h.dataset} {h.learner} ({h.grid}), {h.way}-way, `{h.policy}`, K = {h.k_min}: {verdicts}"


def _whitening(whiteness: pd.DataFrame, h: _Headline) -> list[str]:
    """A small table: per whitening cell and BN, the support-set covariance's condition number (median over the
    network's layers; how many are singular) and the query features' whiteness ‖R − I‖_F/√d (mean over layers),
    at the smallest and the largest K, under the headline policy."""
    w = whiteness[(whiteness["grid"] == h.grid) & (whiteness["policy"] == h.policy) & (whiteness["way"] == h.way)
                  & whiteness["shot"].isin([h.k_min, h.k_max])]  # fmt: skip
    w = w[w["norm"].str.startswith("swbn") | (w["norm"] == "batchnorm")]
    if w.empty or not w["norm"].str.startswith("swbn").any():
        return []

    def cond(rows: pd.DataFrame) -> str:
        singular = int((rows["support_cond"] == math.inf).sum())
        text = f"{rows['support_cond'].median():.3g}"
        return f"{text} ({singular} of {len(rows)} singular)" if singular else text

    lines = [
        "",
        f"Whitening under `{h.policy}` (condition number of the support-set covariance: median over the layers, "
        f"per group for SWBN, over all channels for BN; whiteness of the normalized query features "
        f"‖R − I‖_F/√d: mean over the layers):",
        "",
        f"| cell | cond, K = {h.k_min} | cond, K = {h.k_max} | ‖R − I‖, K = {h.k_min} | ‖R − I‖, K = {h.k_max} |",
        "|---|---|---|---|---|",
    ]
    for (_, norm), rows in w.groupby(["cell", "norm"], sort=False):
        lo, hi = rows[rows["shot"] == h.k_min], rows[rows["shot"] == h.k_max]
        if lo.empty or hi.empty:
            continue
        dims = ", ".join(str(int(d)) for d in sorted(set(rows["cond_dim"])))
        lines.append(f"| `{norm}` (d = {dims}) | {cond(lo)} | {cond(hi)} | {lo['corr_error'].mean():.2f} | "
                     f"{hi['corr_error'].mean():.2f} |")  # fmt: skip
    return lines


def findings_markdown(table: pd.DataFrame, whiteness: pd.DataFrame, grids: Sequence[GridSpec], command: str) -> str:
    """The Findings section as Markdown text: an answer per grid, then the first grid's numbers and diagnostics."""
    lines = ["# Findings", "", f"_Generated by `{command}` from `study.csv`; regenerate, do not edit._", ""]
    heads = [_headline(table, grid) for grid in dict.fromkeys(table["grid"])]
    waiting = [g.name for g in grids if g.name not in set(table["grid"])]
    budgets = sorted({int(e) for e in table["train_episodes"]})
    most = int(table["n_seeds"].max())
    lines.append(
        f"Grids {', '.join(g.name for g in grids)}: {len(table[['grid', 'cell']].drop_duplicates())} cells, up to "
        f"{most} seed{'s' if most > 1 else ''}, {', '.join(map(str, budgets))} training episodes per run "
        f"({table['train_minutes'].min():.0f}-{table['train_minutes'].max():.0f} min of wall time per run, "
        "a cell's mean over its seeds"
        f"{_first_stage(table)}). Headline setting per grid: its smallest way and K, the `support` policy "
        "(statistics from the K·N support images alone), differences to its reference cell (BN where it has one) "
        "paired on identical episodes, "
        "95% intervals from a bootstrap over seeds and episodes (with two or more seeds widened to contain a "
        "t-interval over seeds and episodes; with one seed over episodes alone); the other policies at the same K "
        "after the first interval."
    )
    lines.append("")
    if len(heads) == 1 and not waiting:
        lines.append(f"**Answer.** {_answer(heads[0])}.")
    else:
        lines += ["**Answer.**", "", *(f"- {_answer(h)}." for h in heads)]
        lines += [f"- {name}: no finished and evaluated run yet." for name in waiting]
    h = heads[0]
    others = _compared(h)
    at_min = others[others["shot"] == h.k_min]
    if at_min.empty:
        return "\n".join(lines) + "\n"
    swbn = at_min[at_min["norm"].str.startswith("swbn")]
    rest = at_min[~at_min["norm"].str.startswith("swbn")]
    lines += ["", f"The three numbers that carry it ({h.dataset} {h.learner}):"]
    # In this order, the first three: each SWBN setting at the smallest K, the best other layer there, then the
    # first SWBN setting at the largest K (how the gap closes as the support set grows).
    numbered = [f"`{r['norm']}` − {h.ref_name} at K = {h.k_min}: {_diff(r)}" for _, r in swbn.iterrows()]
    if not rest.empty:
        best = rest.sort_values("diff_to_bn", ascending=False).iloc[0]
        numbered.append(f"the highest-scoring other layer at K = {h.k_min} (picked by this number, which flatters "
                        f"it), `{best['norm']}` − {h.ref_name}: {_diff(best)}")  # fmt: skip
    if not swbn.empty:
        r = swbn.iloc[0]
        at_max = others[(others["shot"] == h.k_max) & (others["cell"] == r["cell"])]
        if not at_max.empty:
            numbered.append(f"`{r['norm']}` − {h.ref_name} at K = {h.k_max}: {_diff(at_max.iloc[0])}")
    lines.extend(f"{i + 1}. {text}" for i, text in enumerate(numbered[:3]))
    if not whiteness.empty:
        lines += _whitening(whiteness, h)
    lines += [
        "",
        "![difference to BN against K, 95% intervals](study_diff_vs_k.png)",
        "",
        "Accuracy against K: [study_accuracy_vs_k.png](study_accuracy_vs_k.png); W's spectrum over training: "
        "[study_w_spectrum.png](study_w_spectrum.png).",
        "",
    ]
    few = int(table["n_seeds"].min())
    seeds = (
        "cells with 1 seed do not estimate seed-to-seed variation at all: their intervals hold test-episode noise "
        "only, and a difference seen there may not hold for another training seed"
        if few == 1
        else f"with {few} seeds for some cells, seed-to-seed variation is estimated from few draws (the interval "
        "may be too narrow)"
    )
    lines.append(
        f"What this cannot separate: {seeds}; budgets are equal in training episodes, not in wall time; one "
        "backbone and one training recipe per learner; the per-row p-values (`study_pairs.csv`) are not corrected "
        "for the many rows. Full table: [study.csv](study.csv); per seed: [study_pairs.csv](study_pairs.csv)."
    )
    return "\n".join(lines) + "\n"
