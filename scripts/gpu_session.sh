#!/usr/bin/env bash
# The one prepared script for a GPU session (docs/gpu.md, issue 20). Everything it runs was built and tested on
# the CPU first; here it only measures and checks what needs a CUDA device. Ordered most important first, each
# step bounded by `timeout`, about 10 minutes in all; results go to $OUT (default ./gpu_out).
#
# Before the device call (on the machine that holds the data), copy Omniglot into the checkout and carry it:
#   mkdir -p data && cp -r ../shared/data/omniglot data/omniglot        # carried as data/omniglot
# On the device machine (python3 3.12, a CUDA build of torch), from the repository root:
#   PYTHONPATH=. bash scripts/gpu_session.sh
set -u
OUT=${OUT:-gpu_out}
PY=${PYTHON:-python3}
export PYTHONPATH=${PYTHONPATH:-.}
mkdir -p "$OUT"
step() { echo "== $(date -u +%H:%M:%S) $*" | tee -a "$OUT/session.log"; }

step "0. device facts"
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1
"$PY" -c "import json, torch; from fewshot.device import device_facts, resolve_device; \
print(json.dumps({'torch': torch.__version__, **device_facts(resolve_device('cuda'))}))" \
  > "$OUT/device.json" 2>&1
cat "$OUT/device.json" | tee -a "$OUT/session.log"

step "1. CUDA tests: parity of every norm x ProtoNet/MAML, device runs, fp32 under bf16, no sync in a training step (~2 min)"
timeout 200 "$PY" -m pytest -q -p no:cacheprovider -rs tests/learners/test_cuda_parity.py tests/test_device.py \
  tests/training/test_device_runs.py tests/norms/test_fp32.py tests/learners/test_check_episode_device.py \
  tests/episodes/test_device_builder.py "tests/training/test_no_host_reads.py::test_a_cuda_training_step_does_not_synchronize" \
  > "$OUT/pytest_cuda.txt" 2>&1
echo "pytest exit $?" | tee -a "$OUT/session.log"; tail -3 "$OUT/pytest_cuda.txt" | tee -a "$OUT/session.log"

step "2. bench device, fp32 (TF32 off): trainer vs plain loops, interleaved (~3 min)"
timeout 240 "$PY" run_episode.py bench device --device cuda --precision fp32 --steps 20 --rounds 3 --warmup 3 \
  --images-per-class 600 --write --out "$OUT/bench_device.csv" --force > "$OUT/bench_device.txt" 2>&1
echo "bench exit $?" | tee -a "$OUT/session.log"; cat "$OUT/bench_device.txt" | tee -a "$OUT/session.log"

step "3. real Omniglot: ProtoNet BN 60w1s5q on the GPU, deterministic, twice; the records compared (~1.5 min)"
for r in a b; do
  timeout 60 "$PY" run_episode.py train --device cuda --deterministic --data-root data --quiet \
    --set train.episodes=100 --set train.log_every=20 --set train.max_minutes=null --out "$OUT/runs/det_$r" \
    > "$OUT/train_det_$r.txt" 2>&1
  echo "train $r exit $?" | tee -a "$OUT/session.log"; tail -1 "$OUT/train_det_$r.txt" | tee -a "$OUT/session.log"
done
timeout 60 "$PY" - "$OUT/runs/det_a" "$OUT/runs/det_b" > "$OUT/deterministic.txt" 2>&1 <<'PYEOF'
import csv, sys, torch
from fewshot.training.checkpoint import load_checkpoint
a, b = sys.argv[1:3]
rows = [[r[:3] for r in csv.reader(open(f"{d}/train_log.csv"))] for d in (a, b)]  # episode, loss, acc
ma, mb = (load_checkpoint(f"{d}/checkpoints/last.pt")["model"] for d in (a, b))
same = all(torch.equal(ma[k], mb[k]) for k in ma)
print(f"log rows identical: {rows[0] == rows[1]} ({len(rows[0])} rows); model state identical: {same}")
PYEOF
cat "$OUT/deterministic.txt" | tee -a "$OUT/session.log"

step "4. the GPU run resumes and evaluates on the CPU (~1 min)"
timeout 80 "$PY" run_episode.py train --resume "$OUT/runs/det_a" --device cpu --set train.episodes=104 --quiet \
  > "$OUT/resume_cpu.txt" 2>&1; echo "resume on cpu exit $?" | tee -a "$OUT/session.log"
timeout 80 "$PY" run_episode.py eval --run "$OUT/runs/det_a" --device cuda --episodes 100 \
  > "$OUT/eval_cuda.txt" 2>&1; echo "eval on cuda exit $?" | tee -a "$OUT/session.log"
tail -2 "$OUT/eval_cuda.txt" | tee -a "$OUT/session.log"

step "5. bench device, bf16 autocast (~1.5 min)"
timeout 120 "$PY" run_episode.py bench device --device cuda --precision bf16 --steps 10 --rounds 2 --warmup 2 \
  --images-per-class 600 --write --out "$OUT/bench_device_bf16.csv" --force > "$OUT/bench_device_bf16.txt" 2>&1
echo "bench bf16 exit $?" | tee -a "$OUT/session.log"; cat "$OUT/bench_device_bf16.txt" | tee -a "$OUT/session.log"
step "done"
