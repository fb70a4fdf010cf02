"""Every flow figure, in one place: the paper-style curves (x: layer, y: flow intensity, one line per
metric with its 95% band), the evolution over epochs, the sweep's grid of panels and the token-level
example pictures."""

from __future__ import annotations

import csv
import logging
import math
import warnings
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from mre.flow.files import METRICS
from mre.stats import LayerStats

log = logging.getLogger(__name__)

COLORS = {"S_wp": "tab:blue", "S_pq": "tab:orange", "S_ww": "tab:green"}
LABELS = {"S_wp": "S_wp (text → anchor)", "S_pq": "S_pq (anchor → target)", "S_ww": "S_ww (other pairs)"}

_CJK_FONTS = (
    "Noto Sans CJK JP",
    "Noto Sans JP",
    "IPAexGothic",
    "IPAGothic",
    "TakaoGothic",
    "VL Gothic",
    "Hiragino Sans",
    "Yu Gothic",
    "MS Gothic",
    "Droid Sans Fallback",
)
_cjk_state: dict[str, Any] = {}


def use_cjk_font(strings: list[str]) -> bool:
    """Pick an installed CJK font when labels hold CJK characters; False when they need one and
    none is installed (matplotlib would draw boxes)."""
    if not any(any(ord(c) >= 0x2E80 for c in s) for s in strings):
        return True
    if "font" not in _cjk_state:
        from matplotlib import font_manager

        names = {f.name for f in font_manager.fontManager.ttflist}
        _cjk_state["font"] = next((n for n in _CJK_FONTS if n in names), None)
        if _cjk_state["font"] is None:
            log.warning("no CJK font installed: Japanese labels cannot be drawn (install fonts-noto-cjk)")
            warnings.filterwarnings("ignore", message=r"Glyph .* missing from")
    if not _cjk_state["font"]:
        return False
    matplotlib.rcParams["font.family"] = [_cjk_state["font"], "DejaVu Sans"]
    return True


def _save(fig, path: str | Path, dpi: int = 120) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def draw_curves(ax, stats: dict[str, LayerStats]) -> None:
    """One line and 95% band per metric present."""
    layers = np.arange(len(next(iter(stats.values())).mean))
    for m in METRICS:
        if m not in stats:
            continue
        s = stats[m]
        ax.plot(layers, s.mean, marker="o", ms=3, color=COLORS[m], label=LABELS[m])
        ax.fill_between(layers, s.lo, s.hi, color=COLORS[m], alpha=0.2, linewidth=0)
    ax.set_xticks(layers)
    ax.set_xlabel("layer")
    ax.set_ylabel("flow intensity")
    ax.grid(alpha=0.3)


def defined(stats: dict[str, LayerStats]) -> dict[str, LayerStats]:
    """The metrics defined at some layer (S_wp and S_pq are not without an anchor)."""
    return {m: s for m, s in stats.items() if not np.all(np.isnan(s.mean))}


def plot_flow(stats: dict[str, LayerStats], path: str | Path, title: str) -> Path:
    """One figure of the three flow curves with their 95% bands."""
    fig, ax = plt.subplots(figsize=(6, 4))
    draw_curves(ax, defined(stats))
    ax.set_title(title, fontsize=9 if len(title) > 50 else 12, wrap=True)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def plot_evolution(epochs: list[int], values: dict[str, np.ndarray], path: str | Path) -> Path:
    """`values[m]` is [epochs, layers]; one heatmap panel per metric (epoch -1 = the base model)."""
    names = [m for m in METRICS if m in values]
    n_layers = values[names[0]].shape[1]
    fig, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 3.4), squeeze=False)
    for ax, m in zip(axes[0], names, strict=True):
        im = ax.imshow(values[m], aspect="auto", origin="lower", cmap="viridis")
        ax.set_xticks(range(n_layers), [str(x) for x in range(n_layers)], fontsize=7)
        ax.set_yticks(range(len(epochs)), [str(e) for e in epochs], fontsize=7)
        ax.set_xlabel("layer")
        ax.set_ylabel("epoch")
        ax.set_title(LABELS[m], fontsize=9)
        fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    return _save(fig, path)


def plot_grid(panels: list[tuple[str, dict[str, LayerStats]]], path: str | Path, title: str) -> Path:
    """One panel of curves per (title, stats), three to a row (the paper's Figures 4 and 5)."""
    use_cjk_font([p[0] for p in panels])
    ncols = min(3, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.6 * ncols, 3.6 * nrows), squeeze=False)
    for ax, (panel_title, stats) in zip(axes.flat, panels, strict=False):
        draw_curves(ax, defined(stats))
        ax.set_title(panel_title, fontsize=8)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def plot_token_example(ex: dict[str, Any], path: Path, title: str) -> Path:
    """Token by token: each text token's flow into the anchor and each anchor token's flow into q
    (`ex` from `mre.analysis.flow_run.token_flows`); the numbers also go to a .csv beside it."""
    original, note = ex, ""
    if not use_cjk_font(ex["text_tokens"] + ex["anchor_tokens"]):  # boxes otherwise: number the tokens
        ex = {
            **ex,
            "text_tokens": [f"t{i}" for i in range(len(ex["text_tokens"]))],
            "anchor_tokens": [f"a{i}" for i in range(len(ex["anchor_tokens"]))],
        }
        note = "\n(no CJK font installed: the token texts are in the .csv beside this figure)"
    n_t, n_a = len(ex["text_tokens"]), len(ex["anchor_tokens"])
    width = min(40.0, max(6.0, 0.28 * max(n_t, n_a) + 2))
    fig, axes = plt.subplots(2, 1, figsize=(width, 5.2), gridspec_kw={"height_ratios": [1, 1]})
    for ax, toks, vals, color, what in (
        (axes[0], ex["text_tokens"], ex["text_flow"], "tab:blue", "text token j → anchor: Σ_p I[p, j]"),
        (axes[1], ex["anchor_tokens"], ex["anchor_flow"], "tab:orange", "anchor token p → q: I[q, p]"),
    ):
        x = np.arange(len(toks))
        ax.bar(x, vals, color=color)
        ax.set_xticks(x, [t if len(t) <= 14 else t[:13] + "…" for t in toks], rotation=90, fontsize=7)
        ax.set_xlim(-0.6, max(len(toks), 1) - 0.4)
        ax.set_ylabel("flow")
        ax.set_title(what, fontsize=9, loc="left")
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(f"{title}\nsample {ex['id']} (target {ex['target']!r}), I {ex['which']}{note}", fontsize=9)
    fig.tight_layout()
    _save(fig, path, dpi=110)
    with open(path.with_suffix(".csv"), "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["part", "position", "token", "flow"])
        for part, toks, vals in (
            ("text->anchor", original["text_tokens"], original["text_flow"]),
            ("anchor->q", original["anchor_tokens"], original["anchor_flow"]),
        ):
            for i, (t, v) in enumerate(zip(toks, vals, strict=True)):
                w.writerow([part, i, t, repr(float(v))])
    return path


def plot_knockout(rows: list[dict[str, Any]], path: str | Path, title: str) -> Path:
    """Attention knockout: ΔF1 and Δ log p against the baseline, per edge set and layers (`group`),
    the knockout next to its controls (`kind`: random, receiver), with 95% intervals (`*_lo`, `*_hi`)."""
    groups = list(dict.fromkeys(r["group"] for r in rows))
    kinds = {"knockout": ("tab:red", -0.27), "random": ("tab:gray", 0.0), "receiver": ("tab:blue", 0.27)}
    fig, axes = plt.subplots(1, 2, figsize=(max(6.0, 1.6 * len(groups) + 3), 3.8))
    for ax, (key, ylabel) in zip(axes, (("d_f1", "Δ F1"), ("d_logp", "Δ log p(gold target)")), strict=True):
        for kind, (color, shift) in kinds.items():
            sel = [next((r for r in rows if r["group"] == g and r["kind"] == kind), None) for g in groups]
            x = [i + shift for i, r in enumerate(sel) if r is not None]
            y = np.array([r[key] for r in sel if r is not None])
            err = np.array([[r[key] - r[f"{key}_lo"], r[f"{key}_hi"] - r[key]] for r in sel if r is not None])
            if len(x):
                ax.bar(x, y, width=0.26, color=color, label=kind, yerr=err.T, capsize=3)
        ax.axhline(0, color="black", linewidth=0.8)
        ax.set_xticks(range(len(groups)), groups, fontsize=8)
        ax.set_ylabel(ylabel)
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def plot_flow_gain(panels: list[tuple[str, list[tuple[float, float, str]]]], path: str | Path) -> Path:
    """One scatter per (data set, direction): flow strength (S_pq / S_ww) against the anchor's F1 gain,
    one point per with-anchor run, coloured by setting."""
    n = len(panels)
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.6 * rows), squeeze=False)
    settings = list(dict.fromkeys(s for _, pts in panels for _, _, s in pts))
    colors = {s: plt.cm.tab10(i % 10) for i, s in enumerate(settings)}
    for ax, (title, pts) in zip(axes.flat, panels, strict=False):
        for s in settings:
            xy = [(x, y) for x, y, label in pts if label == s]
            if xy:
                ax.scatter(*zip(*xy, strict=True), color=colors[s], label=s, s=28)
        ax.axhline(0, color="black", linewidth=0.6)
        ax.set_xlabel("flow strength: mean S_pq / mean S_ww")
        ax.set_ylabel("F1 gain from the anchor")
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[n:]:
        ax.set_visible(False)
    fig.tight_layout()
    return _save(fig, path)


def plot_group_curves(curves: list[tuple[str, LayerStats]], path: str | Path, title: str) -> Path:
    """One metric per layer for several groups (e.g. S_pq per WLI type), each with its 95% band."""
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    use_cjk_font([label for label, _ in curves])
    for label, s in curves:
        x = np.arange(len(s.mean))
        (line,) = ax.plot(x, s.mean, label=label, linewidth=1.4)
        ax.fill_between(x, s.lo, s.hi, color=line.get_color(), alpha=0.15, linewidth=0)
    ax.set_xlabel("layer")
    ax.set_ylabel("S_pq")
    ax.set_title(title, fontsize=10)
    if curves:
        ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    return _save(fig, path)


Band = tuple[list[float], list[float | None], list[float | None]]  # mean, lower, upper per x


def _band(ax, x: list[int], band: Band, label: str, color: Any) -> None:
    """A line with its interval shaded where the interval is known."""
    mean, lo, hi = band
    ax.plot(x, mean, marker="o", color=color, label=label, linewidth=1.4)
    known = [i for i, (a, b) in enumerate(zip(lo, hi, strict=True)) if a is not None and b is not None]
    if known:
        ax.fill_between([x[i] for i in known], [lo[i] for i in known], [hi[i] for i in known],
                        color=color, alpha=0.18, linewidth=0)  # fmt: skip


def plot_learning_curve(
    panels: list[tuple[str, list[int], dict[str, Band], Band, list[float | None]]], path: str | Path
) -> Path:
    """Per group (data set and other settings) two panels against the training-set size (log scale):
    F1 of each setting with its 95% band, the majority baseline dashed, and Δ with its 95% band."""
    fig, axes = plt.subplots(len(panels), 2, figsize=(10, 3.6 * len(panels)), squeeze=False)
    use_cjk_font([title for title, *_ in panels])
    for (ax_f1, ax_d), (title, x, sides, diff, majority) in zip(axes, panels, strict=True):
        for i, (label, band) in enumerate(sides.items()):
            _band(ax_f1, x, band, label, plt.cm.tab10(i))
        known = [(a, m) for a, m in zip(x, majority, strict=True) if m is not None]
        if known:
            ax_f1.plot(*zip(*known, strict=True), linestyle="--", color="grey", label="majority baseline")
        ax_f1.set_ylabel("F1")
        ax_f1.set_title(title, fontsize=9)
        ax_f1.legend(fontsize=7)
        _band(ax_d, x, diff, "Δ F1", plt.cm.tab10(2))
        ax_d.axhline(0, color="black", linewidth=0.6)
        ax_d.set_ylabel("Δ F1")
        ax_d.set_title(f"{title}: Δ", fontsize=9)
        for ax in (ax_f1, ax_d):
            ax.set_xscale("log")
            ax.set_xticks(x, [str(v) for v in x])
            ax.minorticks_off()
            ax.set_xlabel("training texts (dataset.n_train)")
    fig.tight_layout()
    return _save(fig, path)


DepthSeries = tuple[list[float], list[float], list[float], list[float]]  # depth, mean, lower, upper


def plot_depth_profile(
    panels: list[tuple[str, str, dict[str, dict[str, DepthSeries]]]], path: str | Path
) -> Path:
    """One panel per (title, y label, series by model and kind) against relative depth (0 = first
    layer, 1 = last), one colour per model: a knockout solid and its controls dashed (random) and
    dotted (receiver); a flow's fine-tuned model solid and its base model dashed. Each point has its
    interval (lo, hi)."""
    styles = {"knockout": "-", "random": "--", "receiver": ":", "tuned": "-", "base": "--"}
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 3.8), squeeze=False)
    models = list(dict.fromkeys(m for _, _, by_model in panels for m in by_model))
    colors = {m: plt.cm.tab10(i % 10) for i, m in enumerate(models)}
    for ax, (title, ylabel, by_model) in zip(axes.flat, panels, strict=True):
        for model, by_kind in by_model.items():
            for kind, (x, y, lo, hi) in by_kind.items():
                err = np.array([np.subtract(y, lo), np.subtract(hi, y)])
                ax.errorbar(x, y, yerr=err, color=colors[model], linestyle=styles.get(kind, "-"), marker="o",
                            markersize=3, capsize=2, linewidth=1.2, label=f"{model}: {kind}")  # fmt: skip
        ax.axhline(0, color="black", linewidth=0.6)
        ax.set_xlim(0, 1)
        ax.set_xlabel("relative depth of the layers")
        ax.set_ylabel(ylabel)
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, path)


Series = tuple[list[int], list[float]]  # steps, values


def plot_dev_curves(
    panels: list[tuple[str, dict[str, list[Series]], list[Series]]], path: str | Path
) -> Path:
    """One panel per (title, runs' dev F1 by setting, dev majority baselines): every run a thin line
    in its setting's colour (one legend entry per setting), each distinct majority baseline dashed
    grey, against the global step."""
    cols = min(len(panels), 2)
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(6 * cols, 3.8 * rows), squeeze=False)
    settings = list(dict.fromkeys(s for _, by_setting, _ in panels for s in by_setting))
    colors = {s: plt.cm.tab10(i % 10) for i, s in enumerate(settings)}
    use_cjk_font([title for title, *_ in panels])
    for ax, (title, by_setting, baselines) in zip(axes.flat, panels, strict=False):
        for setting, series in by_setting.items():
            for i, (steps, f1) in enumerate(series):
                ax.plot(steps, f1, marker="o", markersize=2.5, linewidth=1.0, alpha=0.85,
                        color=colors[setting], label=setting if i == 0 else None)  # fmt: skip
        for i, (steps, majority) in enumerate(baselines):
            ax.plot(steps, majority, linestyle="--", color="grey", linewidth=0.9,
                    label="dev majority baseline" if i == 0 else None)  # fmt: skip
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel("training step")
        ax.set_ylabel("dev F1")
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(panels) :]:
        ax.set_visible(False)
    fig.tight_layout()
    return _save(fig, path)
