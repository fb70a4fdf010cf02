"""Attention-saliency information flow (text -> anchor -> target) for causal LMs.

`options` (what is measured), `engine` (one pass over a batch), `files` (the per-sample and
per-layer CSV files and their summaries), `callback` (flow during training), `plots` (every figure)."""
