#!/usr/bin/env bash
# Park unfinished runs in git, and restore them in a later session.
#
#   bash scripts/park_runs.sh save [DIR ...]  # the runs in runs/sweeps (and DIRs under runs/) -> results/inflight/runs/
#                                             # (each replaces its parked copy; other parked runs stay)
#                                             # (then commit results/inflight)
#   bash scripts/park_runs.sh restore   # results/inflight/runs/ -> runs/ (then rerun the sweep: it resumes)
#
# Why: a session's machine is reclaimed when the session ends and runs/ is not tracked, so a training that
# spans sessions survives only as committed files. Run folders hold their checkpoints (last.pt and best.pt,
# SHA-256 sealed, about 1-2 MB each for Conv-4), logs and configs. git holds no file over 1 MiB (house rule), so
# a larger checkpoint is parked as numbered parts of at most 960 KiB (NAME.pt.part-000, -001, ...) beside its
# SHA-256 (NAME.pt.sha256); restore joins them and refuses a join whose hash differs. The fixed episode files of
# runs/_episode_sets are not carried (26 MB for one study grid): they are regenerated from their seeds and checked
# against their content hash, so evaluations resume on the same episodes. Run locks (.lock) are
# never carried: a restored run is free to resume. A finished run keeps its best.pt (a second stage starts
# from it) but not its last.pt (nothing resumes it). A copy is taken as it is on disk: checkpoints are
# written atomically, so a save during training carries the last complete checkpoint.
# restore never replaces a run folder that already exists in runs/ (it may be newer than the parked copy): it
# names it and leaves it; delete that folder first to take the parked one.
set -euo pipefail
cd "$(dirname "$0")/.."
park=results/inflight/runs

join_parts() {  # join_parts DIR: rebuild every NAME.pt parked in parts under DIR, checked against NAME.pt.sha256
  find "$1" -name '*.pt.part-000' -print0 | while IFS= read -r -d '' first; do
    local pt=${first%.part-000} want got
    [ -f "$pt.sha256" ] || { echo "park: $pt.sha256 is missing, so the join of $pt.part-*" \
      "cannot be checked; restore it from git (git checkout -- results/inflight) and retry" >&2; exit 1; }
    cat "$pt".part-* > "$pt.tmp"
    want=$(cat "$pt.sha256"); got=$(sha256sum "$pt.tmp" | cut -d' ' -f1)
    if [ "$want" != "$got" ]; then
      rm -f "$pt.tmp"
      echo "park: the parts of $pt join to sha256 $got, expected $want (a part is missing or changed);" \
        "restore them from git (git checkout -- results/inflight) and retry" >&2
      exit 1
    fi
    mv "$pt.tmp" "$pt"
    rm -f "$pt".part-* "$pt.sha256"
  done
}
case "${1:-}" in
  save)
    mkdir -p "$park"
    rm -rf "$park/_episode_sets"
    for d in runs/sweeps "${@:2}"; do
      d=${d%/}
      [ -d "$d" ] || continue
      [[ $d == runs/* ]] || { echo "park: $d is not a folder under runs/" >&2; exit 2; }
      # run by run: a parked run that is not in runs/ now (not restored this session) stays parked
      for config in $(find "$d" -name config.yaml -not -path '*/eval/*' | sort); do
        run=$(dirname "$config")
        rm -rf "$park/${run#runs/}"
        mkdir -p "$(dirname "$park/${run#runs/}")"
        cp -a "$run" "$park/${run#runs/}"
      done
    done
    find "$park" \( -name '*.lock' -o -name '*.tmp' \) -delete
    for metrics in $(find "$park" -name metrics.json); do
      if grep -q '"status": "finished"' "$metrics"; then rm -f "$(dirname "$metrics")/checkpoints/last.pt"; fi
    done
    find "$park" -name '*.pt' -size +1024k -print0 | while IFS= read -r -d '' pt; do
      sha256sum "$pt" | cut -d' ' -f1 > "$pt.sha256"
      split -b 960k -d -a 3 "$pt" "$pt.part-"
      rm "$pt"
      echo "parked in $(ls "$pt".part-* | wc -l) parts: $pt"
    done
    du -sh "$park"
    ;;
  restore)
    [ -d "$park" ] || { echo "nothing parked in $park" >&2; exit 1; }
    mkdir -p runs/_episode_sets
    [ -d "$park/_episode_sets" ] && cp -an "$park/_episode_sets/." runs/_episode_sets/
    for config in $(cd "$park" && find . -name config.yaml -not -path './_episode_sets/*' | sort); do
      run=$(dirname "${config#./}")
      if [ -e "runs/$run" ]; then
        echo "kept runs/$run (exists; the parked copy was not restored: delete it first to take the parked one)"
        continue
      fi
      mkdir -p "runs/$(dirname "$run")"
      rm -rf "runs/$run.restoring"
      cp -a "$park/$run" "runs/$run.restoring"
      join_parts "runs/$run.restoring" || { rm -rf "runs/$run.restoring"; exit 1; }
      mv "runs/$run.restoring" "runs/$run"
      echo "restored runs/$run"
    done
    ;;
  *)
    echo "usage: bash scripts/park_runs.sh save|restore" >&2
    exit 2
    ;;
esac
