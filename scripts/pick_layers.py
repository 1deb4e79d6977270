#!/usr/bin/env python
"""Name the miniImageNet grid's two placeholder layers by a rule fixed before the Omniglot layers were trained.

``configs/study/miniimagenet_protonet.yaml`` trains BN, both SWBN settings and "the two best other layers on
Omniglot"; until those are known its last cells hold placeholders, named in its ``# PLACEHOLDERS: A and B stand
for ...`` comment, and ``scripts/study_queue.sh`` skips the grid. The rule (stated here and in that comment before
any of the other layers was trained, so the choice cannot follow the miniImageNet results or a favourite metric):

    score(layer) = mean of its ProtoNet accuracies on Omniglot at K = 1 under the ``support`` policy, 5- and
                   20-way (the regime the study asks about: statistics from the K·N support images alone),
                   read from the Omniglot grid's ``study.csv``; every layer but BN and SWBN is a candidate,
                   each must be in the table; the two highest scores are picked (ties: the cell order of the
                   Omniglot grid).

``--apply`` rewrites the placeholder cells of the miniImageNet grid to the two picked layers (a placeholder that
was picked keeps its cells), drops the ``PLACEHOLDERS`` comment and records the choice in its place. A picked layer
keeps the recipe its Omniglot cell gives it: its norm policies (TaskNorm trains with the support set as context) on
the episodic cell, its layer options (``model.norm_kwargs.*``) on both stages. Only a grid
none of whose placeholder cells has a run folder yet is rewritten (a run started under a placeholder's name would
otherwise be attributed to another layer).

Usage: python scripts/pick_layers.py [--study CSV] [--omniglot-grid YAML] [--grid YAML] [--runs-root DIR] [--apply]
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fewshot.study.grid import CellSpec, GridSpec, load_grid, plan_runs  # noqa: E402

STUDY_CSV = ROOT / "results/study/omniglot_protonet/study.csv"
OMNIGLOT_GRID = ROOT / "configs/study/omniglot_protonet.yaml"
TARGET_GRID = ROOT / "configs/study/miniimagenet_protonet.yaml"
NOT_CANDIDATES = ("batchnorm", "swbn")  # cell-name prefixes of the layers every grid trains anyway (both SWBN)
WAYS, SHOT, POLICY = (5, 20), 1, "support"
# The comment's first line and its continuation lines up to the next line that is not a comment.
PLACEHOLDERS = re.compile(r"^# PLACEHOLDERS: (\S+) and (\S+) stand for .*\n(?:# .*\n)*", re.MULTILINE)
CELLS = re.compile(r"^cells:[ \t]*(?:#.*)?\n((?:  .*\n)*)", re.MULTILINE)  # the key line, then its indented lines
# A layer's own recipe in its Omniglot cell, carried to its miniImageNet cells: the norm policies of episodic
# training and validation (the episodic stage only: a classifier batch has no support set) and the layer's options.
EPISODIC_KEYS = ("train.norm_policy=", "eval.norm_policy=", "model.norm_kwargs.")
BOTH_STAGES_KEYS = ("model.norm_kwargs.",)


def layer_recipe(cell: CellSpec) -> tuple[str, ...]:
    """The overrides of an Omniglot cell that belong to its layer (policies, layer options), in order."""
    return tuple(o for o in cell.overrides if o.startswith(EPISODIC_KEYS))


def rank(study: pd.DataFrame, candidates: list[str]) -> pd.DataFrame:
    """Every candidate cell with its two accuracies and score, best first (ties: the order of ``candidates``)."""
    rows = study[(study["shot"] == SHOT) & (study["policy"] == POLICY) & study["way"].isin(WAYS)]
    table = rows.pivot_table(index="cell", columns="way", values="mean", aggfunc="first")
    table = table.reindex(index=candidates, columns=list(WAYS))
    missing = [c for c in candidates if table.loc[c].isna().any()]
    if missing:
        raise ValueError(
            f"the study table has no {POLICY}-policy K = {SHOT} accuracy at {' and '.join(map(str, WAYS))} ways for "
            f"{', '.join(missing)}; every candidate must be trained and evaluated before two are picked: run "
            "`bash scripts/study_queue.sh`, then `bash scripts/land_study.sh omniglot_protonet`"
        )
    if len(candidates) < 2:
        raise ValueError(f"two layers are picked from the candidates, got {len(candidates)}: {candidates}")
    ranked = table.rename(columns=lambda w: f"acc_{w}way")
    ranked["score"] = ranked.mean(axis=1)
    ranked["order"] = range(len(ranked))
    return ranked.sort_values(["score", "order"], ascending=[False, True]).drop(columns="order")


def rewrite(
    text: str, ranked: pd.DataFrame, recipes: dict[str, tuple[str, ...]] | None = None
) -> tuple[str, dict[str, str]]:
    """The grid's text with its placeholders renamed to the two best of ``ranked``, each picked layer's recipe
    (``recipes[layer]``, from :func:`layer_recipe`) added to its cells, and the choice recorded (with their
    scores); and the renaming (placeholder -> layer)."""
    match = PLACEHOLDERS.search(text)
    if match is None:
        if "# PLACEHOLDERS" in text:
            raise ValueError(
                "the grid's PLACEHOLDERS comment is not in the expected form '# PLACEHOLDERS: A and B stand for "
                "...' (A, B: the placeholder cells' layer names); reword it so"
            )
        raise ValueError("the grid has no '# PLACEHOLDERS: A and B stand for ...' comment: its layers are named")
    picked = list(ranked.index[:2])
    holders = [match.group(1), match.group(2)]
    free = [p for p in picked if p not in holders]
    renaming = {h: (h if h in picked else free.pop(0)) for h in holders}
    scores = " and ".join(f"{p} {ranked.loc[p, 'score']:.2f}" for p in picked)
    record = (
        f"# The two other layers were picked by scripts/pick_layers.py: the best mean {POLICY}-policy K = {SHOT}\n"
        f"# accuracy over 5 and 20 ways on Omniglot (results/study/omniglot_protonet/study.csv): {scores}.\n"
    )
    text = text[: match.start()] + record + text[match.end() :]
    cells = CELLS.search(text)
    if cells is None:
        raise ValueError(
            "the grid has no top-level 'cells:' line followed by its indented cells; write the cells as in "
            "configs/study/omniglot_protonet.yaml"
        )
    token = re.compile(r"(?<![A-Za-z0-9])(" + "|".join(map(re.escape, holders)) + r")(?![A-Za-z0-9])")
    body = token.sub(lambda m: renaming[m.group(1)], cells.group(1))
    for layer in picked:
        body = _with_recipe(body, layer, (recipes or {}).get(layer, ()))
    return text[: cells.start(1)] + body + text[cells.end(1) :], renaming


def _with_recipe(body: str, layer: str, recipe: tuple[str, ...]) -> str:
    """The cells' text with ``recipe`` appended to the ``set`` list of ``layer``'s cells: all of it on the episodic
    cell (``name: layer``), its layer options on the pre-training cell (``name: pre_layer``)."""
    if not recipe:
        return body
    chunks = re.split(r"(?m)^(?=  - )", body)  # one chunk per cell, each starting with its "  - " line
    names = [m.group(1) if (m := re.match(r"  - \{name: ([^,}\s]+)", chunk)) else None for chunk in chunks]
    if layer not in names:
        raise ValueError(
            f"the grid has no cell named {layer} to give its Omniglot recipe ({', '.join(recipe)}) to; its cells "
            "are written as '  - {name: ..., set: [norm=...]}' (see configs/study/miniimagenet_protonet.yaml)"
        )
    for i, (chunk, name) in enumerate(zip(chunks, names, strict=True)):
        if name not in (layer, f"pre_{layer}"):
            continue
        extra = recipe if name == layer else tuple(o for o in recipe if o.startswith(BOTH_STAGES_KEYS))
        if not extra:
            continue
        target = f"norm={layer}]"
        if chunk.count(target) != 1:
            raise ValueError(
                f"cell {name} of the grid has no single 'set: [..., {target}' list to add {layer}'s Omniglot "
                f"recipe ({', '.join(extra)}) to; write its set list as in configs/study/miniimagenet_protonet.yaml"
            )
        chunks[i] = chunk.replace(target, f"norm={layer}, {', '.join(extra)}]")
    return "".join(chunks)


def started_runs(grid: GridSpec, root: Path | None, renaming: dict[str, str]) -> list[str]:
    """Existing run folders (from :func:`plan_runs`) of the placeholder cells that are renamed, both stages."""
    renamed = {cell for old, new in renaming.items() if old != new for cell in (old, f"pre_{old}")}
    return [str(run.run_dir) for run in plan_runs(grid, root) if run.cell.name in renamed and run.run_dir.exists()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--study", type=Path, default=STUDY_CSV, help="the Omniglot grid's study.csv")
    parser.add_argument("--omniglot-grid", type=Path, default=OMNIGLOT_GRID, help="the grid that ranks the layers")
    parser.add_argument("--grid", type=Path, default=TARGET_GRID, help="the grid whose placeholders are named")
    parser.add_argument("--runs-root", type=Path, default=None, help="runs root (default: $FEWSHOT_RUNS or ./runs)")
    parser.add_argument("--apply", action="store_true", help="rewrite --grid (else print the choice only)")
    args = parser.parse_args(argv)
    try:
        return _pick(args)
    except ValueError as error:  # ConfigError is one too
        raise SystemExit(f"error: {error}") from error


def _pick(args: argparse.Namespace) -> int:
    omniglot = load_grid(args.omniglot_grid)
    candidates = [c.name for c in omniglot.cells if not c.name.startswith(NOT_CANDIDATES)]
    study = pd.read_csv(args.study, comment="#")
    ranked = rank(study[study["grid"] == omniglot.name], candidates)
    print(ranked.to_string(float_format=lambda v: f"{v:.2f}"))
    print(f"picked: {ranked.index[0]}, {ranked.index[1]}")
    if not args.apply:
        return 0
    grid = load_grid(args.grid)
    recipes = {c.name: layer_recipe(c) for c in omniglot.cells if c.name in candidates}
    text, renaming = rewrite(args.grid.read_text(), ranked, recipes)
    started = started_runs(grid, args.runs_root, renaming)
    if started:
        raise ValueError(f"placeholder cells already have run folders ({', '.join(started)}): move them aside first")
    with tempfile.TemporaryDirectory() as tmp:  # the rewritten grid must load before it replaces the file
        (Path(tmp) / args.grid.name).write_text(text)
        rewritten = {c.name: c for c in load_grid(Path(tmp) / args.grid.name).cells}
    for layer in ranked.index[:2]:  # the recipe must have reached the cell that trains the layer episodically
        recipe = recipes[layer]
        if recipe and rewritten[layer].overrides[-len(recipe) :] != recipe:
            raise ValueError(f"the rewritten grid's {layer} cell does not end with its Omniglot recipe {recipe}")
    args.grid.write_text(text)
    print(f"wrote {args.grid}: " + ", ".join(f"{o} -> {n}" for o, n in renaming.items()))
    for layer in ranked.index[:2]:
        if recipes[layer]:
            print(f"{layer} keeps its Omniglot recipe: {', '.join(recipes[layer])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
