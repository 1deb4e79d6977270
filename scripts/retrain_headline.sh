#!/usr/bin/env bash
# Retrain the models behind the README's headline Omniglot table from their recorded commands, evaluate them on
# the same fixed test episodes and archive them with their weights (results/runs/<experiment>/headline-<name>/).
# The original runs stopped at a wall-time budget (40 min ProtoNet, 90 min MAML) after the episode counts set here;
# budgets in episodes make the retraining independent of the machine's speed. Resumable: after an interruption
# (session end, Ctrl-C) run the same command again; finished runs and evaluations are skipped.
#   bash scripts/retrain_headline.sh [NAME ...]     (default: all five, in this order)
# HEADLINE_RUNS=DIR trains under DIR instead of runs/, and ARCHIVE=0 leaves the runs unarchived: a re-derivation
# beside the committed ones (e.g. after a kernel change), compared with scripts/rederived_runs.py.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
export FEWSHOT_DATA=${FEWSHOT_DATA:-../shared/data}
PROTO=configs/protonet/omniglot_vinyals_1shot.yaml
MAML=configs/maml/omniglot_vinyals_5w1s.yaml
EPISODES="--set train.max_minutes=null --set train.episodes"
ROOT=${HEADLINE_RUNS:-runs}

train() {  # train NAME DIR ARGS...: start DIR, or resume it, unless it finished
  local dir=$2; shift 2
  if [[ -f $dir/metrics.json ]] && grep -q '"status": "finished"' "$dir/metrics.json"; then return 0; fi
  if [[ -d $dir ]]; then "$PY" run_episode.py train "$@" --out "$dir" --resume --quiet
  else "$PY" run_episode.py train "$@" --out "$dir" --quiet; fi
}

run() {
  local name=$1 dir
  case $name in
    protonet_bn)
      dir=$ROOT/protonet_omniglot_vinyals_1shot/headline-bn
      train "$name" "$dir" --config $PROTO $EPISODES=5620 ;;
    protonet_swbn)
      dir=$ROOT/protonet_omniglot_vinyals_1shot/headline-swbn
      train "$name" "$dir" --config $PROTO --set norm=swbn $EPISODES=4632 ;;
    protonet_swbn_rho0.1)
      dir=$ROOT/protonet_omniglot_vinyals_1shot/headline-swbn-rho0.1
      train "$name" "$dir" --config $PROTO --set norm=swbn --set model.norm_kwargs.shrinkage=0.1 $EPISODES=4632 ;;
    maml_bn)
      dir=$ROOT/maml_omniglot_vinyals_5w1s/headline-bn
      train "$name" "$dir" --config $MAML --set train.n_query=15 --set train.lr=3e-3 --set train.val_every=12800 \
        $EPISODES=65344 ;;
    maml_swbn_rho0.1)
      dir=$ROOT/maml_omniglot_vinyals_5w1s/headline-swbn-rho0.1
      train "$name" "$dir" --config $MAML --set norm=swbn --set model.norm_kwargs.shrinkage=0.1 $EPISODES=61504 ;;
    *) echo "unknown run '$name': protonet_bn protonet_swbn protonet_swbn_rho0.1 maml_bn maml_swbn_rho0.1" >&2
       exit 2 ;;
  esac
  case $name in  # the evaluations of the original runs (an existing one is reused)
    protonet_*)
      "$PY" run_episode.py eval --run "$dir"
      "$PY" run_episode.py eval --run "$dir" --n-way 20
      "$PY" run_episode.py eval --run "$dir" --n-shot 5
      "$PY" run_episode.py eval --run "$dir" --n-way 20 --n-shot 5 ;;
    maml_*)
      "$PY" run_episode.py eval --run "$dir" --policy support --check-leak --leak-episodes 5
      "$PY" run_episode.py eval --run "$dir"
      "$PY" run_episode.py eval --run "$dir" --n-query 1 ;;
  esac
  if [[ ${ARCHIVE:-1} != 0 ]]; then "$PY" scripts/archive_run.py "$dir"; fi
}

for name in "${@:-protonet_bn protonet_swbn protonet_swbn_rho0.1 maml_bn maml_swbn_rho0.1}"; do
  for n in $name; do run "$n"; done
done
