"""The study table's statistics on hand-made per-episode accuracies (no training): values against a direct
computation, pairing with the reference, a cell whose seeds trained different budgets, printed p-values, and
what FINDINGS.md says when a cell has one seed or unpaired seeds, its verdicts at a bound of 0, and its whitening
table."""

import math
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from fewshot.errors import DataError
from fewshot.evaluation.stats import paired_comparison
from fewshot.study.findings import findings_markdown, verdict
from fewshot.study.report import _csv, study_table

N_EPISODES = 40


def _rows(cell, norm, seeds, rng, *, episodes=100, shift=0.0):
    """One row per (seed, K) of :func:`fewshot.study.report.collect`'s frame for a 5-way support-policy cell."""
    rows = []
    for seed in seeds:
        for shot in (1, 5):
            acc = np.clip(rng.normal(0.7 + 0.05 * shot + shift, 0.1, N_EPISODES), 0, 1).round(2)
            rows.append({
                "grid": "g", "cell": cell, "seed": seed, "learner": "protonet", "backbone": "conv4", "norm": norm,
                "dataset": "omniglot", "train_shot": 1, "train_episodes": episodes, "train_minutes": 2.0 + seed,
                "pretrain_episodes": 0, "pretrain_minutes": 0.0, "pretrain_learner": "", "way": 5, "shot": shot,
                "query": 5, "policy": "support", "episode_hash": f"hash-k{shot}", "acc": acc,
            })  # fmt: skip
    return rows


@pytest.fixture
def frame():
    rng = np.random.default_rng(7)
    return pd.DataFrame(_rows("batchnorm", "batchnorm", (0, 1), rng) + _rows("swbn", "swbn", (0, 1), rng, shift=-0.02))


def test_means_and_paired_differences_equal_a_direct_computation(frame):
    table, pairs = study_table(frame, {"g": "batchnorm"})
    assert len(table) == 4 and len(pairs) == 2 * 2
    row = table[(table["cell"] == "swbn") & (table["shot"] == 1)].iloc[0]
    acc = {(r.cell, r.seed): r.acc for r in frame[frame["shot"] == 1].itertuples()}
    assert row["mean"] == pytest.approx(100 * np.mean([acc["swbn", s].mean() for s in (0, 1)]))
    direct = np.mean([(acc["swbn", s] - acc["batchnorm", s]).mean() for s in (0, 1)])
    assert row["diff_to_bn"] == pytest.approx(100 * direct) and row["n_paired_seeds"] == 2
    assert row["ci_low"] <= row["mean"] <= row["ci_high"]
    assert row["ci95"] == pytest.approx((row["ci_high"] - row["ci_low"]) / 2)
    assert (row["train_episodes"], row["train_minutes"], row["reference"]) == (100, 2.5, "batchnorm")
    seed1 = pairs[(pairs["shot"] == 1) & (pairs["seed"] == 1)].iloc[0]
    p = paired_comparison(acc["batchnorm", 1], acc["swbn", 1])
    assert (seed1["diff"], seed1["p_t"], seed1["wins"]) == (pytest.approx(100 * p.mean_diff), p.p_t, p.wins)
    assert seed1["train_episodes"] == 100 and list(pairs.columns[:8]) == [
        "grid", "cell", "learner", "backbone", "norm", "dataset", "train_shot", "train_episodes",
    ]  # fmt: skip
    assert table.loc[table["cell"] == "batchnorm", "diff_to_bn"].isna().all()


def test_seeds_of_one_cell_with_different_budgets_are_an_error_not_two_rows(frame):
    frame.loc[(frame["cell"] == "swbn") & (frame["seed"] == 1), "train_episodes"] = 101
    with pytest.raises(DataError, match=r"g/swbn 5-way 1-shot support: its seeds trained different numbers .*"
                                         r"seed 0: 100, seed 1: 101"):  # fmt: skip
        study_table(frame, {"g": "batchnorm"})


def test_the_reference_is_matched_on_queries_too(frame):
    other = frame[frame["cell"] == "batchnorm"].assign(query=15, episode_hash="other-file")
    table, _ = study_table(pd.concat([frame, other], ignore_index=True), {"g": "batchnorm"})
    swbn = table[table["cell"] == "swbn"]
    assert swbn["diff_to_bn"].notna().all()  # paired with the 5-query BN rows, not refused for the 15-query ones


def test_small_p_values_are_printed_not_rounded_to_zero():
    text = _csv(pd.DataFrame({"diff": [1.23456789], "p_t": [2.9e-20], "p_perm": [4.99975e-05]}), "cmd")
    assert text.splitlines() == ["# command: cmd", "diff,p_t,p_perm", "1.2346,2.9e-20,4.99975e-05"]


def test_findings_say_when_an_interval_holds_episode_noise_only(frame):
    one_seed = frame[frame["seed"] == 0]
    table, _ = study_table(one_seed, {"g": "batchnorm"})
    text = findings_markdown(table, pd.DataFrame(), [SimpleNamespace(name="g")], "cmd")
    assert "(1 paired seed: test episodes only)" in text
    assert "cells with 1 seed do not estimate seed-to-seed variation at all" in text
    table, _ = study_table(frame, {"g": "batchnorm"})
    text = findings_markdown(table, pd.DataFrame(), [SimpleNamespace(name="g")], "cmd")
    assert "(2 paired seeds and their episodes)" in text and "with 2 seeds for some cells" in text
    assert "`swbn` − BN at K = 1" in text


def test_findings_name_a_reference_that_is_not_bn(frame):
    for column in ("cell", "norm"):
        frame[column] = frame[column].replace("batchnorm", "groupnorm")
    table, _ = study_table(frame, {"g": "groupnorm"})
    text = findings_markdown(table, pd.DataFrame(), [SimpleNamespace(name="g")], "cmd")
    assert "`swbn` − `groupnorm` at K = 1" in text and "− BN" not in text


def test_findings_give_every_grid_a_line_even_without_a_finished_run(frame):
    table, _ = study_table(frame, {"g": "batchnorm"})
    grids = [SimpleNamespace(name="g"), SimpleNamespace(name="later")]
    text = findings_markdown(table, pd.DataFrame(), grids, "cmd")
    assert "- omniglot protonet (g), 5-way, `support`, K = 1: `swbn` is" in text
    assert "- later: no finished and evaluated run yet." in text
    other = frame[frame["cell"] == "batchnorm"].assign(cell="groupnorm", norm="groupnorm")
    table, _ = study_table(pd.concat([frame[frame["cell"] == "batchnorm"], other]), {"g": "batchnorm"})
    assert "K = 1: no SWBN cell has a finished, paired seed yet." in findings_markdown(
        table, pd.DataFrame(), grids[:1], "c"
    )
    table, _ = study_table(frame[frame["cell"] == "batchnorm"], {"g": "batchnorm"})
    assert "K = 1: no paired comparison yet (BN is finished; no other cell has a finished seed)." in findings_markdown(
        table, pd.DataFrame(), grids[:1], "c"
    )
    table, _ = study_table(frame[frame["cell"] == "swbn"], {"g": "batchnorm"})
    assert "K = 1: no paired comparison yet (BN, the reference, has no finished seed)." in findings_markdown(
        table, pd.DataFrame(), grids[:1], "c"
    )


def test_verdict_reads_a_bound_that_is_zero_up_to_rounding_as_zero():
    # per-episode differences are multiples of 1/(way*query): a bootstrap bound that is 0 exactly can come out as
    # -1.85e-17 (the CSV then prints -0.0000); it must not turn "not distinguishable" into "worse than"
    row = pd.Series({"diff_low": -0.31, "diff_high": -1.85e-17})
    assert verdict(row) == "not distinguishable from"
    assert verdict(row.replace(-1.85e-17, -0.01)) == "worse than"
    assert verdict(pd.Series({"diff_low": 1e-17, "diff_high": 0.4})) == "not distinguishable from"
    assert verdict(pd.Series({"diff_low": 0.01, "diff_high": 0.4})) == "better than"


def test_findings_claim_one_seed_for_that_seed_and_name_unpaired_seeds(frame):
    # BN has seeds 0 and 1, swbn only seed 1: one paired seed, named, and BN's seed 0 said to be unpaired
    table, _ = study_table(frame[(frame["cell"] == "batchnorm") | (frame["seed"] == 1)], {"g": "batchnorm"})
    row = table[(table["cell"] == "swbn") & (table["shot"] == 1)].iloc[0]
    assert (row["seeds"], row["paired_seeds"], row["reference_seeds"]) == ("1", "1", "0 1")
    text = findings_markdown(table, pd.DataFrame(), [SimpleNamespace(name="g")], "cmd")
    assert "`swbn` seed 1 is " in text and " BN seed 1 (" in text
    assert "(1 paired seed: test episodes only); BN's seed 0 unpaired)" in text
    table, _ = study_table(frame, {"g": "batchnorm"})
    text = findings_markdown(table, pd.DataFrame(), [SimpleNamespace(name="g")], "cmd")
    assert "`swbn` is " in text and "unpaired" not in text


def test_findings_give_the_other_policies_beside_the_headline(frame):
    running = frame.assign(policy="running", episode_hash=frame["episode_hash"] + "-running")
    table, _ = study_table(pd.concat([frame, running], ignore_index=True), {"g": "batchnorm"})
    text = findings_markdown(table, pd.DataFrame(), [SimpleNamespace(name="g")], "cmd")
    run = table[(table["cell"] == "swbn") & (table["shot"] == 1) & (table["policy"] == "running")].iloc[0]
    assert "`support`, K = 1: `swbn` is" in text
    assert f"; `running` {run['diff_to_bn']:+.2f} points [{run['diff_low']:+.2f}, {run['diff_high']:+.2f}]" in text


def test_findings_whitening_table_takes_the_median_layer_and_counts_singular_ones(frame):
    table, _ = study_table(frame, {"g": "batchnorm"})
    rows = []
    for norm, conds in (("batchnorm", [math.inf, 300.0, 500.0, math.inf]), ("swbn", [math.inf, 10.0, 20.0, 30.0])):
        for shot in (1, 5):
            for layer, cond in enumerate(conds):
                rows.append({"grid": "g", "cell": norm, "norm": norm, "way": 5, "shot": shot, "policy": "support",
                             "layer": f"blocks.{layer}.norm", "support_cond": cond * shot, "corr_error": 1.0 + layer,
                             "cond_dim": 16 if norm == "swbn" else 64})  # fmt: skip
    text = findings_markdown(table, pd.DataFrame(rows), [SimpleNamespace(name="g")], "cmd")
    assert "| `swbn` (d = 16) | 25 (1 of 4 singular) | 125 (1 of 4 singular) | 2.50 | 2.50 |" in text
    assert "| `batchnorm` (d = 64) | inf (2 of 4 singular) | inf (2 of 4 singular) | 2.50 | 2.50 |" in text
