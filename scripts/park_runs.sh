#!/usr/bin/env bash
# Park unfinished runs in git, and restore them in a later session.
#
#   bash scripts/park_runs.sh save      # runs/ -> results/inflight/runs/ (then commit results/inflight)
#   bash scripts/park_runs.sh restore   # results/inflight/runs/ -> runs/ (then rerun the sweep: it resumes)
#
# Why: a session's machine is reclaimed when the session ends and runs/ is not tracked, so a training that
# spans sessions survives only as committed files. Run folders hold their checkpoints (last.pt and best.pt,
# SHA-256 sealed, about 1-2 MB each for Conv-4), logs and configs; the fixed evaluation episode files in
# runs/_episode_sets are carried too so that evaluations resume on the same files. Run locks (.lock) are
# never carried: a restored run is free to resume. A copy is taken as it is on disk: checkpoints are
# written atomically, so a save during training carries the last complete checkpoint.
set -euo pipefail
cd "$(dirname "$0")/.."
park=results/inflight/runs
case "${1:-}" in
  save)
    mkdir -p "$park"
    for d in runs/sweeps runs/_episode_sets; do
      [ -d "$d" ] || continue
      rm -rf "$park/${d#runs/}"
      cp -a "$d" "$park/${d#runs/}"
    done
    find "$park" \( -name '*.lock' -o -name '*.tmp' \) -delete
    du -sh "$park"
    ;;
  restore)
    [ -d "$park" ] || { echo "nothing parked in $park" >&2; exit 1; }
    mkdir -p runs
    cp -a "$park/." runs/
    echo "restored into runs/: $(ls "$park" | tr '\n' ' ')"
    ;;
  *)
    echo "usage: bash scripts/park_runs.sh save|restore" >&2
    exit 2
    ;;
esac
