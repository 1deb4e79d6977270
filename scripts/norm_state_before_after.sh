#!/usr/bin/env bash
# Train the same four short runs with two fewshot trees (e.g. main before issue 14 and the branch after it), for
# scripts/compare_run_metrics.py: ProtoNet BN and SWBN (100 episodes, a learning-rate step at 50 so SWBN's
# rate hook fires), second-order MAML BN and SWBN (20 meta-steps of 4 tasks, a learning-rate step at 10).
# Usage: scripts/norm_state_before_after.sh BEFORE_TREE AFTER_TREE RUNS_ROOT [DATA_ROOT]
set -euo pipefail
before=$1 after=$2 root=$3 data=${4:-/work/shared/data}
python=${PYTHON:-python}
export OMP_NUM_THREADS=1
common=(--data-root "$data" --quiet --set train.max_minutes=null --set train.threads=1 --set train.checkpoint_minutes=100)
protonet=(--set train.episodes=100 --set train.lr_step_episodes=50 --set train.log_every=10)
maml=(--config configs/maml/omniglot_vinyals_5w1s.yaml --set train.meta_batch=4 --set train.n_query=5
      --set train.episodes=80 --set train.lr_step_episodes=40 --set train.log_every=4 --set data.val_split=null)
swbn=(--set norm=swbn --set "model.norm_kwargs={shrinkage: 0.1}")
for side in before after; do
  tree=${!side}
  cd "$tree"
  PYTHONPATH=. $python run_episode.py train "${common[@]}" "${protonet[@]}" --out "$root/$side/protonet_bn"
  PYTHONPATH=. $python run_episode.py train "${common[@]}" "${protonet[@]}" "${swbn[@]}" --out "$root/$side/protonet_swbn"
  PYTHONPATH=. $python run_episode.py train "${common[@]}" "${maml[@]}" --out "$root/$side/maml_bn"
  PYTHONPATH=. $python run_episode.py train "${common[@]}" "${maml[@]}" "${swbn[@]}" --out "$root/$side/maml_swbn"
done
