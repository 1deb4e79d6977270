#!/usr/bin/env bash
# Issue 13's benchmarks in one go, alone on the machine (stop trainings first: `kill -TERM <pid>` saves a run
# for --resume / the sweep to continue). Each writes its CSV under results/ with the exact command on its first
# line; the run's own log goes to logs/bench_all.log. About 15 minutes on 2 idle cores.
#   bash scripts/bench_all.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
export FEWSHOT_DATA=${FEWSHOT_DATA:-../shared/data}
mkdir -p logs
exec > >(tee -a logs/bench_all.log) 2>&1
echo "== $(date -u +%FT%TZ) load $(cut -d' ' -f1-3 /proc/loadavg)"
# Training steps side by side, every setting, all variants, torch's default threads (= the cores, as training).
"$PY" run_episode.py bench train --sections steps --protonet-steps 20 --maml-steps 3 --warmup-steps 1 \
  --write --force
echo "== $(date -u +%FT%TZ)"
# Evaluation against the bare forwards of the same images, Omniglot and miniImageNet 5w1s15q, running policy.
"$PY" run_episode.py bench eval \
  --config configs/protonet/omniglot_vinyals_1shot.yaml,configs/protonet/miniimagenet_1shot.yaml \
  --episodes 600 --rounds 3 --policy running --write --force
echo "== $(date -u +%FT%TZ)"
# Seconds and peak memory per meta-step of every MAML config, first and second order, each in a fresh process.
"$PY" run_episode.py bench maml --steps 2 --write --force
echo "== $(date -u +%FT%TZ) done"
