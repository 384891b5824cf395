#!/usr/bin/env bash
# The README's small CPU comparisons: every arm with seeds 0, 1, 2, summarised into experiments/results.md
# and experiments/results.jsonl. experiments/seeds.sh holds the blocks and their budgets.
# Usage: bash experiments/cpu_runs.sh [block ...]   (blocks: quick fmnist fmnist-lt fmnist-hc digits-moco gather fmnist-moco)
exec bash "$(dirname "$0")/seeds.sh" "$@"
