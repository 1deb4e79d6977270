#!/usr/bin/env bash
# The study's runs across its four grids, in the order the compute plan gives them (docs/study.md): each step is
# one `sweep` call, which skips finished runs and resumes stopped ones exactly, so this script is rerun as it is in
# every session until everything is done. One process at a time: two trainings halve each other's speed.
#   bash scripts/study_queue.sh            # run the queue from wherever it stands
#   bash scripts/study_queue.sh --list     # print the steps, run nothing
# Before it, in a fresh session: `bash scripts/park_runs.sh restore`; after (or before the session ends, having
# stopped it with `kill -TERM <pid>`, which saves the current run): `bash scripts/park_runs.sh save`, commit.
set -euo pipefail
set -f  # the patterns are sweep's fnmatch patterns, never file globs
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
export FEWSHOT_DATA=${FEWSHOT_DATA:-../shared/data}

STEPS=(
  # issue 15: SWBN on miniImageNet, rho = 0 then 0.1, on the BN run's batches and episodes
  "miniimagenet_protonet pre_swbn/seed0 swbn/seed0"
  "miniimagenet_protonet pre_swbn_rho0.1/seed0 swbn_rho0.1/seed0"
  # issue 15: MAML on miniImageNet, BN and SWBN (its last missing result)
  "miniimagenet_maml batchnorm/seed0 swbn/seed0"
  # issue 16: the seeds of BN and both SWBN settings on Omniglot
  "omniglot_protonet */seed1 */seed2"
  # issue 16: MAML on Omniglot at equal work (BN reused from the headline run)
  "omniglot_maml *"
  # issue 16: every other layer on Omniglot (one seed), then the two best of them on miniImageNet
  "omniglot_protonet *"
  "miniimagenet_protonet *"
  "miniimagenet_maml *"
)

for step in "${STEPS[@]}"; do
  read -r grid patterns <<<"$step"
  args=()
  for pattern in $patterns; do args+=(--only "$pattern"); done
  echo "[queue] $grid: ${patterns}"
  if [[ ${1:-} == --list ]]; then continue; fi
  if grep -q '^# PLACEHOLDERS' "configs/study/$grid.yaml" && [[ $patterns == "*" ]]; then
    # its last cells stand for layers chosen from the Omniglot ranking: never trained before they are named
    echo "[queue] $grid: skipped, its grid still has placeholder cells (see its PLACEHOLDERS comment)"; continue
  fi
  rc=0
  "$PY" run_episode.py sweep --grid "configs/study/$grid.yaml" "${args[@]}" || rc=$?
  if (( rc == 130 || rc > 128 )); then  # stopped (Ctrl-C, kill -TERM): the current run is saved; stop here too
    echo "[queue] stopped during $grid; run this script again to continue"; exit "$rc"
  elif (( rc != 0 )); then  # a run that failed (diverged) is recorded in its folder; the others go on
    echo "[queue] $grid: not every run finished (sweep status --grid configs/study/$grid.yaml); going on"
  fi
done
