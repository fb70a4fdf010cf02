"""Flow figures in the paper's style (x: layer, y: flow intensity, one line per metric) with 95%
confidence bands, and the evolution of one metric over epochs x layers as a heatmap."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

METRICS = ("S_wp", "S_pq", "S_ww")
COLORS = {"S_wp": "tab:blue", "S_pq": "tab:orange", "S_ww": "tab:green"}
LABELS = {"S_wp": "S_wp (text → anchor)", "S_pq": "S_pq (anchor → target)", "S_ww": "S_ww (other pairs)"}


def draw_curves(ax, layers: np.ndarray, curves: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]) -> None:
    """`curves[m] = (mean, lo, hi)` per layer; one line and band per metric present."""
    for m in METRICS:
        if m not in curves:
            continue
        mean, lo, hi = curves[m]
        ax.plot(layers, mean, marker="o", ms=3, color=COLORS[m], label=LABELS[m])
        ax.fill_between(layers, lo, hi, color=COLORS[m], alpha=0.2, linewidth=0)
    ax.set_xticks(layers)
    ax.set_xlabel("layer")
    ax.set_ylabel("flow intensity")
    ax.grid(alpha=0.3)


def plot_flow(layers: np.ndarray, curves: dict, path: str | Path, title: str) -> Path:
    """One figure of the three flow curves with their 95% bands."""
    fig, ax = plt.subplots(figsize=(6, 4))
    draw_curves(ax, layers, curves)
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


def plot_evolution(
    epochs: list[int], layers: np.ndarray, values: dict[str, np.ndarray], path: str | Path
) -> Path:
    """`values[m]` is [epochs, layers]; one heatmap panel per metric (epoch -1 = the base model)."""
    names = [m for m in METRICS if m in values]
    fig, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 3.4), squeeze=False)
    for ax, m in zip(axes[0], names, strict=True):
        im = ax.imshow(values[m], aspect="auto", origin="lower", cmap="viridis")
        ax.set_xticks(range(len(layers)), [str(x) for x in layers], fontsize=7)
        ax.set_yticks(range(len(epochs)), [str(e) for e in epochs], fontsize=7)
        ax.set_xlabel("layer")
        ax.set_ylabel("epoch")
        ax.set_title(LABELS[m], fontsize=9)
        fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)
