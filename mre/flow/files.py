"""The flow's two file schemas, their readers and writers, and the per-layer summary; used by the
training callback (`<run>/flow/epoch_<k>.csv`) and the analysis (`<run>/analysis/flow.csv`) alike.

* samples file (`flow_samples.csv`, `flow/epoch_<k>_samples.csv`): one row per (sample, layer):
  `sample` (index in the test split), `id`, `layer`, `S_wp`, `S_pq`, `S_ww` and the pair counts
  `n_wp`, `n_pq`, `n_ww`. Floats are written with `repr` (exact round trip); a torn last line (a
  killed writer) is detected and dropped on reading. With `normalize=per_sample` the values are each
  sample's shares; with `none` and `of_means` they are the raw means.
* layer file (`flow.csv`, `flow/epoch_<k>.csv`): one row per layer; for each metric m: `m` (mean over
  samples), `m_std`, `m_lo` / `m_hi` (95% percentile bootstrap interval of the mean, samples
  resampled jointly over layers, seeded; never below 0 for these non-negative quantities) and `m_n`
  (samples where m is defined). With `normalize=of_means`: `m` is m's mean divided by the sum of the
  three means (a ratio of means), `m_std` the samples' std divided by that sum, and the interval a
  bootstrap of the ratio (the three shares of each resample sum to 1).
"""

from __future__ import annotations

import csv
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from mre.errors import UserError
from mre.flow.engine import FlowResult
from mre.flow.options import Normalize
from mre.results import read_stream_csv, write_stream_csv
from mre.stats import LayerStats, bootstrap_layer_means, bootstrap_layer_shares

METRICS = ("S_wp", "S_pq", "S_ww")
SAMPLE_COLUMNS = ["sample", "id", "layer", *METRICS, "n_wp", "n_pq", "n_ww"]
SAMPLE_QUOTING = csv.QUOTE_MINIMAL  # the samples file is numeric: fields quoted only where needed
LAYER_SUFFIXES = ("", "_std", "_lo", "_hi", "_n")
LAYER_COLUMNS = ["layer", *(f"{m}{s}" for m in METRICS for s in LAYER_SUFFIXES)]


class FlowFileError(UserError, ValueError):
    """A flow file is not of this schema."""


def _fmt(x: float) -> str:
    return repr(float(x))


# --------------------------------------------------------------------------------------------------
# samples
# --------------------------------------------------------------------------------------------------


def sample_rows(res: FlowResult, samples: Iterable[tuple[int, int, str]]) -> list[dict[str, Any]]:
    """Rows of the samples file for `(b, sample index, id)` triples of one engine result."""
    rows = []
    for b, index, rid in samples:
        for layer in range(res.n_layers):
            values = (
                index,
                rid,
                layer,
                _fmt(res.s_wp[b, layer]),
                _fmt(res.s_pq[b, layer]),
                _fmt(res.s_ww[b, layer]),
                int(res.n_wp[b]),
                int(res.n_pq[b]),
                int(res.n_ww[b]),
            )
            rows.append(dict(zip(SAMPLE_COLUMNS, values, strict=True)))
    return rows


def write_samples(path: Path, rows: Iterable[dict[str, Any]]) -> Path:
    """The whole samples file, atomically (`mre.results.write_stream_csv`, fields quoted only where
    needed)."""
    return write_stream_csv(path, SAMPLE_COLUMNS, rows, quoting=SAMPLE_QUOTING)


def read_samples(path: Path) -> list[dict[str, str]]:
    """Rows of a (possibly torn) samples file, the torn last line dropped."""
    return read_stream_csv(path, SAMPLE_COLUMNS)


def complete_samples(rows: list[dict[str, str]], n_layers: int | None) -> dict[int, list[dict[str, str]]]:
    """Samples whose rows cover every layer exactly once, by sample index."""
    by: dict[int, list[dict[str, str]]] = {}
    for r in rows:
        by.setdefault(int(r["sample"]), []).append(r)
    if n_layers is None:
        return {}
    return {s: rs for s, rs in by.items() if sorted(int(r["layer"]) for r in rs) == list(range(n_layers))}


def sample_values(rows: list[dict[str, str]]) -> tuple[list[int], dict[str, np.ndarray]]:
    """Sample indices (sorted) and metric -> [n_samples, n_layers] (NaN where undefined)."""
    samples = sorted({int(r["sample"]) for r in rows})
    pos = {s: i for i, s in enumerate(samples)}
    n_layers = 1 + max(int(r["layer"]) for r in rows)
    vals = {m: np.full((len(samples), n_layers), np.nan) for m in METRICS}
    for r in rows:
        i, layer = pos[int(r["sample"])], int(r["layer"])
        for m in METRICS:
            vals[m][i, layer] = float(r[m])
    return samples, vals


def result_values(results: list[FlowResult]) -> dict[str, np.ndarray]:
    """metric -> [n_samples, n_layers] of engine results, in their order."""
    return {
        m: np.concatenate([getattr(r, f"s_{m[2:]}").double().numpy() for r in results], axis=0)
        for m in METRICS
    }


# --------------------------------------------------------------------------------------------------
# per-layer summary
# --------------------------------------------------------------------------------------------------


def summarize(
    values: dict[str, np.ndarray], n_boot: int, seed: int, normalize: Normalize | str = Normalize.none
) -> dict[str, LayerStats]:
    """Per metric and layer: mean, std, 95% bootstrap interval and n (see the module docstring).

    `normalize=of_means` rescales after averaging, so it happens here and not per sample: the three
    means are divided by their sum (a ratio of means, `bootstrap_layer_shares`). `per_sample` values
    come rescaled from the engine and are averaged like raw ones."""
    if str(normalize) == Normalize.of_means:
        shares = bootstrap_layer_shares([values[m] for m in METRICS], n_boot=n_boot, seed=seed)
        return dict(zip(METRICS, shares, strict=True))
    return {m: bootstrap_layer_means(values[m], n_boot=n_boot, seed=seed) for m in METRICS}


def write_layers(stats: dict[str, LayerStats], path: Path) -> Path:
    """The layer file of a summary."""
    n_layers = len(stats[METRICS[0]].mean)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(LAYER_COLUMNS)
        for layer in range(n_layers):
            row: list[Any] = [layer]
            for m in METRICS:
                s = stats[m]
                row += [_fmt(s.mean[layer]), _fmt(s.std[layer]), _fmt(s.lo[layer]), _fmt(s.hi[layer])]
                row.append(int(s.n[layer]))
            w.writerow(row)
    return path


def read_layers(path: str | Path) -> dict[str, LayerStats]:
    """The summary in a layer file; metrics undefined at every layer (no anchor) are left out."""
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames != LAYER_COLUMNS:
            raise FlowFileError(
                f"{path} is not a flow layer file of this version (columns {reader.fieldnames})"
            )
        rows = list(reader)
    out = {}
    for m in METRICS:
        cols = [np.array([float(r[f"{m}{s}"]) for r in rows]) for s in LAYER_SUFFIXES]
        if np.all(np.isnan(cols[0])):
            continue
        out[m] = LayerStats(mean=cols[0], std=cols[1], lo=cols[2], hi=cols[3], n=cols[4].astype(int))
    return out
