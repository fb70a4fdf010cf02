#!/usr/bin/env bash
# The GPU check in one command (scripts/gpu_check.py: options --time-limit SECONDS, --out DIR, ...).
exec python3 "$(dirname "$0")/gpu_check.py" "$@"
