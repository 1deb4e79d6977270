#!/usr/bin/env bash
# Quick start, command 1: set up .venv and run the main job (ProtoNet/Conv-4, BN vs SWBN, Omniglot
# 5-way 1-shot, trained and evaluated on the same fixed episodes, then the table and paired comparison).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python run_episode.py study "$@"
