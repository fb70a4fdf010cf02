#!/usr/bin/env bash
# Fetch, on a machine WITH network, the wheels that the GPU machine lacks into .whl/ (git-ignored), so that
# `python3 scripts/gpu_check.py` can install them there without network (pip --no-index --target).
#
#   bash scripts/fetch_gpu_wheels.sh            # into .whl/ (its old *.whl are removed first)
#   bash scripts/fetch_gpu_wheels.sh DIR        # into DIR
#
# The GPU machine: Python 3.12, manylinux x86-64, with torch, transformers, lightning, peft, torchmetrics,
# accelerate, numpy, scipy, matplotlib, rich, pyyaml, huggingface_hub, safetensors, tokenizers and pytest,
# but none of the package's other dependencies (pyproject.toml): hydra-core, omegaconf (+ their
# antlr4-python3-runtime 4.9.3), bitsandbytes (QLoRA) and gguf (reading a packaged GGUF model). wandb is not
# fetched: it is only needed by conf/logger/default.yaml, and the GPU tests use logger=csv.
# Versions are those the project is tested with. Everything must stay under 64 MiB (what travels with the
# repository to the GPU machine); bitsandbytes (~41 MiB) is dropped, with a message, if it would not fit,
# and the QLoRA GPU test then skips saying bitsandbytes is not installed.
set -euo pipefail
cd "$(dirname "$0")/.."
DEST="${1:-.whl}"
LIMIT_MIB=64
PY=(--python-version 3.12 --implementation cp)
# bitsandbytes' wheels are tagged manylinux_2_24: that tag is in the list too
PLATFORMS=(manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64
  manylinux2014_x86_64 manylinux1_x86_64)
SMALL=(hydra-core==1.3.8 omegaconf==2.3.1 gguf==0.19.0)
LARGE=(bitsandbytes==0.50.2)

download() {
  python3 -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: "${PY[@]}" \
    "${PLATFORMS[@]/#/--platform=}" -d "$DEST" "$1"
}

mkdir -p "$DEST"
rm -f "$DEST"/*.whl
for req in "${SMALL[@]}"; do download "$req"; done
# antlr4-python3-runtime 4.9.3 (pinned by omegaconf 2.3 and hydra-core 1.3) exists only as a source
# archive: build its wheel here (pure Python, py3-none-any, so it installs on 3.12 as it is)
python3 -m pip wheel -q --disable-pip-version-check --no-deps --no-binary=:all: -w "$DEST" \
  antlr4-python3-runtime==4.9.3
ls "$DEST"/antlr4_python3_runtime-4.9.3-py3-none-any.whl >/dev/null

size_mib() { du -cb "$DEST"/*.whl | tail -1 | awk '{printf "%.1f", $1 / 1048576}'; }
for req in "${LARGE[@]}"; do
  download "$req"
  if awk -v s="$(size_mib)" -v l="$LIMIT_MIB" 'BEGIN { exit !(s > l) }'; then
    name="${req%%==*}"
    rm -f "$DEST/${name//-/_}"-*.whl
    echo "fetch_gpu_wheels: $req left out: the wheels would exceed $LIMIT_MIB MiB (its GPU test will skip)" >&2
  fi
done

echo "fetch_gpu_wheels: wheels in $DEST/ (Python 3.12, manylinux x86-64):"
du -b "$DEST"/*.whl | awk '{printf "  %8.1f MiB  %s\n", $1 / 1048576, $2}'
echo "  total $(size_mib) MiB (limit $LIMIT_MIB MiB)"
