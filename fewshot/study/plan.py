"""Compute plan of a grid from measured times: what is left, and how long it takes on the machine that measured.

For each planned run::

    train_minutes = (target − done) · s_train / 60
    eval_minutes  = Σ over the evaluations not yet done of  episodes · way · (K + Q) · s_image / 60

``s_train`` (seconds per training episode, wall time: steps, sampling, checkpoints, validation) is the run's own
``train_seconds / episodes_done`` once it has trained, else the median of that ratio over measured runs with the
same training signature (learner, backbone, norm and its options, dataset, protocol, image options, train
way/shot/query/meta-batch, policy). ``s_image`` (seconds per test image, support and query, all policies alike) is
the median of ``eval_seconds / (n · way · (shot + query))`` over the measured evaluations of the same learner,
backbone, norm and dataset, else of the same learner, backbone and dataset. Measured runs are searched under the
runs root and any folders given (``results/runs`` by default). Unmeasured runs are listed with the command that
measures them: a few training episodes of the run itself, which count towards its budget. A run its cell takes
from an existing finished run (``reuse:``) costs no training.
"""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fewshot.study.status import RunStatus

__all__ = ["Measurements", "RunCost", "train_signature", "measure", "estimate", "format_plan"]


def train_signature(cfg: Any) -> str:
    """What a training episode's cost depends on, as one string (two configs with equal strings cost the same)."""
    t = cfg.train
    return json.dumps(
        [cfg.learner.name, cfg.learner.kwargs, cfg.model.backbone, cfg.model.backbone_kwargs, cfg.model.norm,
         cfg.model.norm_kwargs, cfg.data.dataset, cfg.data.protocol, cfg.data.options, t.n_way, t.n_shot, t.n_query,
         t.meta_batch, t.norm_policy, t.channels_last, cfg.data.val_split, t.val_every, t.val_episodes],
        sort_keys=True, default=str,
    )  # fmt: skip


def _eval_keys(cfg: Any) -> tuple[str, str]:
    base = [cfg.learner.name, cfg.model.backbone, cfg.data.dataset, cfg.data.protocol]
    return json.dumps([*base, cfg.model.norm, cfg.model.norm_kwargs], default=str), json.dumps(base)


@dataclass
class Measurements:
    """Measured seconds per training episode (by training signature) and per test image (by eval key)."""

    train: dict[str, list[float]]
    image: dict[str, list[float]]
    runs: int


def measure(folders: Iterable[str | Path]) -> Measurements:
    """Collect measurements from every run folder (a ``metrics.json`` beside a ``config.yaml``) under ``folders``."""
    from fewshot.config.loader import read_config
    from fewshot.errors import FewshotError
    from fewshot.training.run_dir import read_json

    train, image = defaultdict(list), defaultdict(list)
    seen, n = set(), 0
    for root in folders:
        root = Path(root)
        for metrics_path in sorted(root.rglob("metrics.json")) if root.is_dir() else ():
            run = metrics_path.parent.resolve()
            if run in seen or not (run / "config.yaml").is_file():
                continue
            seen.add(run)
            try:
                cfg, m = read_config(run / "config.yaml"), read_json(metrics_path)
            except FewshotError:
                continue  # an old or damaged run: no measurement from it
            n += 1
            if m.get("episodes_done") and m.get("train_seconds"):
                train[train_signature(cfg)].append(m["train_seconds"] / m["episodes_done"])
            for summary_path in run.glob("eval/*/summary.json"):
                s = read_json(summary_path)
                if s.get("eval_seconds") and s.get("n"):
                    per_image = s["eval_seconds"] / (s["n"] * s["way"] * (s["shot"] + s["query"]))
                    for key in _eval_keys(cfg):
                        image[key].append(per_image)
    return Measurements(dict(train), dict(image), n)


@dataclass(frozen=True)
class RunCost:
    """Remaining cost of one run (minutes; ``None`` when nothing comparable was measured)."""

    status: RunStatus
    episodes_left: int
    seconds_per_episode: float | None
    source: str
    train_minutes: float | None
    eval_minutes: float | None


def estimate(statuses: Sequence[RunStatus], measured: Measurements) -> list[RunCost]:
    """The :class:`RunCost` of every run (see the module docstring for the formula)."""
    out = []
    for st in statuses:
        run, cfg = st.run, st.run.cfg
        left = max(0, run.target_episodes - st.episodes_done)
        if st.state == "todo" and run.reuse_from is not None:  # taken from a finished run: nothing to train
            left, spe, source = 0, 0.0, "reused run"
        elif st.episodes_done > 0 and st.minutes > 0:
            spe, source = 60.0 * st.minutes / st.episodes_done, "this run"
        elif measured.train.get(train_signature(cfg)):
            values = measured.train[train_signature(cfg)]
            spe, source = statistics.median(values), f"median of {len(values)} run(s)"
        else:
            spe, source = None, "unmeasured"
        spec = run.cell.evaluation
        specific, generic = _eval_keys(cfg)
        per_image = measured.image.get(specific) or measured.image.get(generic)
        evals_left = spec.settings()[st.evals_done :] if st.evals_done < st.evals_total else []
        images = sum(spec.episodes * w * (k + spec.queries) for w, k, _ in evals_left)
        eval_minutes = images * statistics.median(per_image) / 60.0 if per_image else (0.0 if not images else None)
        out.append(RunCost(st, left, spe, source, left * spe / 60.0 if spe is not None else None, eval_minutes))
    return out


def _minutes(v: float | None) -> str:
    return "?" if v is None else f"{v:.1f}"


def format_plan(costs: Sequence[RunCost], commands: Sequence[str]) -> str:
    """The plan as text: a row per run, totals, and how to measure the unmeasured."""
    header = ("run", "state", "episodes left", "s/episode", "source", "train min", "eval min")
    rows = [
        (c.status.run.key, c.status.state, str(c.episodes_left),
         "?" if c.seconds_per_episode is None else f"{c.seconds_per_episode:.3f}", c.source, _minutes(c.train_minutes),
         _minutes(c.eval_minutes))
        for c in costs
    ]  # fmt: skip
    widths = [max(len(h), *(len(r[j]) for r in rows)) for j, h in enumerate(header)]
    lines = ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in [header, *rows]]
    known_train = sum(c.train_minutes for c in costs if c.train_minutes is not None)
    known_eval = sum(c.eval_minutes for c in costs if c.eval_minutes is not None)
    unknown = [(c, cmd) for c, cmd in zip(costs, commands, strict=True)
               if c.train_minutes is None or c.eval_minutes is None]  # fmt: skip
    lines.append(
        f"total measured: {known_train:.0f} training + {known_eval:.0f} evaluation minutes = "
        f"{(known_train + known_eval) / 60:.1f} hours on one process"
        + (f"; {len(unknown)} run(s) unmeasured" if unknown else "")
    )  # fmt: skip
    if unknown:
        lines.append("measure them with a few episodes of the run itself (they count towards its budget):")
        lines.extend(f"  {cmd} --until-episodes 20 --no-eval" for c, cmd in unknown if c.train_minutes is None)
    return "\n".join(lines)
