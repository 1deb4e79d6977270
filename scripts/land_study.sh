#!/usr/bin/env bash
# Land the study's finished runs in results/: archive every finished run of the named grids (both stages of a
# two-stage cell) into results/study/sweeps/<grid>/, rerun each named grid's report and the report of all grids, the
# accuracy table and plot, the paired miniImageNet comparisons and training curves (issue 15), the README/docs
# tables and the statistics check. Every step is a command that can be rerun on its own; this only chains them in order.
#   bash scripts/land_study.sh miniimagenet_protonet [omniglot_protonet ...]
# A run still held by a live process (training, evaluating) is refused by archive_run.py, and the script stops.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
export FEWSHOT_DATA=${FEWSHOT_DATA:-../shared/data}
RUNS=${FEWSHOT_RUNS:-runs}
GRIDS=(omniglot_protonet miniimagenet_protonet omniglot_maml miniimagenet_maml)
(( $# )) || { echo "usage: bash scripts/land_study.sh GRID [GRID ...]  (grids: ${GRIDS[*]})" >&2; exit 2; }

for grid in "$@"; do
  [[ -f configs/study/$grid.yaml ]] || { echo "no grid configs/study/$grid.yaml (grids: ${GRIDS[*]})" >&2; exit 2; }
  # `sweep status` prints one row per run: "#  CELL/seedS  STATE  ..."; only finished runs are final
  mapfile -t finished < <("$PY" run_episode.py sweep status --grid "configs/study/$grid.yaml" --runs-root "$RUNS" |
    awk '$3 == "finished" { print $2 }')
  if (( ${#finished[@]} == 0 )); then echo "[land] $grid: no finished run"; continue; fi
  dirs=()
  for run in "${finished[@]}"; do dirs+=("$RUNS/sweeps/$grid/$run"); done
  echo "[land] $grid: archiving ${finished[*]}"
  "$PY" scripts/archive_run.py "${dirs[@]}" --dest "results/study/sweeps/$grid"
  "$PY" run_episode.py sweep report --grid "configs/study/$grid.yaml" --runs-root results/study \
    --out-dir "results/study/$grid" --force
done

all=()
for grid in "${GRIDS[@]}"; do all+=(--grid "configs/study/$grid.yaml"); done
"$PY" run_episode.py sweep report "${all[@]}" --runs-root results/study --out-dir results/study --force
# the accuracy table holds the results/runs models and the miniImageNet study cells (the Omniglot cells are in the
# study table); a grid with no archived run yet is left out of the command
table_runs=(results/runs)
for grid in miniimagenet_protonet miniimagenet_maml; do
  [[ -d results/study/sweeps/$grid ]] && table_runs+=("results/study/sweeps/$grid")
done
"$PY" run_episode.py table --runs "${table_runs[@]}" --format csv --published \
  --out results/accuracy.csv --plot results/accuracy_vs_shots.png --force

# issue 15: BN against both SWBN settings, and shrinkage against none, on the same 600 test episodes
mini=results/study/sweeps/miniimagenet_protonet
if [[ -f $mini/swbn_rho0.1/seed0/metrics.json ]]; then
  out=results/compare_protonet_miniimagenet.csv
  mode=--force
  for shot in 1 5; do
    for policy in running support transductive; do
      "$PY" run_episode.py compare --runs "$mini/batchnorm/seed0" "$mini/swbn/seed0" "$mini/swbn_rho0.1/seed0" \
        --policy "$policy" --n-shot "$shot" --out "$out" "$mode"
      mode=--append
      "$PY" run_episode.py compare --runs "$mini/swbn/seed0" "$mini/swbn_rho0.1/seed0" \
        --policy "$policy" --n-shot "$shot" --out "$out" --append
    done
  done
fi

# issue 15: MAML BN against SWBN (rho = 0) on the same 600 test episodes, under the policies MAML is evaluated with
maml=results/study/sweeps/miniimagenet_maml
if [[ -f $maml/batchnorm/seed0/metrics.json && -f $maml/swbn/seed0/metrics.json ]]; then
  out=results/compare_maml_miniimagenet.csv
  mode=--force
  for shot in 1 5; do
    for policy in transductive support; do
      "$PY" run_episode.py compare --runs "$maml/batchnorm/seed0" "$maml/swbn/seed0" \
        --policy "$policy" --n-shot "$shot" --out "$out" "$mode"
      mode=--append
    done
  done
  # the reference code's test episodes: K queries per class (1 at 1-shot); compare evaluates both runs on them
  "$PY" run_episode.py compare --runs "$maml/batchnorm/seed0" "$maml/swbn/seed0" \
    --policy transductive --n-shot 1 --n-query 1 --out "$out" --append
fi

# both stages of every finished miniImageNet ProtoNet cell: training loss and validation accuracy
stages=()
for cell in batchnorm swbn swbn_rho0.1; do
  for stage in "pre_$cell" "$cell"; do
    [[ -f $mini/$stage/seed0/metrics.json ]] && stages+=("$mini/$stage/seed0")
  done
done
if (( ${#stages[@]} )); then
  "$PY" run_episode.py curves --runs "${stages[@]}" --out results/miniimagenet_protonet_curves.png --x episodes --force
fi

# every finished miniImageNet MAML cell: training loss and validation accuracy against tasks
maml_runs=()
for cell in batchnorm swbn swbn_rho0.1; do
  [[ -f $maml/$cell/seed0/metrics.json ]] && maml_runs+=("$maml/$cell/seed0")
done
if (( ${#maml_runs[@]} )); then
  "$PY" run_episode.py curves --runs "${maml_runs[@]}" --out results/miniimagenet_maml_curves.png --x episodes --force
fi

"$PY" scripts/render_results.py
"$PY" scripts/check_results_stats.py
echo "[land] done: review 'git status' and 'git diff --stat', then commit results/ with the docs"
