"""The data view users run before training: statistics of a data set and rendered prompts with the
text, anchor and target position marked (from the builder's token ranges, not from strings)."""

from __future__ import annotations

from collections import Counter

import numpy as np
from rich.console import Console
from rich.table import Table
from rich.text import Text

from mre.data.context import SPLITS, TaskContext, build_context
from mre.data.prompts import Encoded, PromptError
from mre.setting import Setting


def split_stats(ctx: TaskContext) -> Table:
    """Rows, distinct labels (and those a split has that train lacks: always scored wrong), WLI pairs and
    types, and token length percentiles per split."""
    t = Table(title=f"{ctx.dataset_name}: splits")
    for col in (
        "split",
        "rows",
        "encoded",
        "labels",
        "not in train",
        "WLI pairs",
        "WLI types",
        "no WLI",
        "tokens p50",
        "p90",
        "p99",
        "max",
    ):
        t.add_column(col, justify="right")
    trained = {r.tli for r in ctx.records("train")}
    for name in SPLITS:
        recs = ctx.records(name)
        labels = {r.tli for r in recs if r.tli is not None}
        lens = [len(e.prompt_ids) + len(e.answer_ids) for e in ctx.items(name)] or [0]
        p50, p90, p99 = np.percentile(lens, [50, 90, 99])
        t.add_row(
            name,
            str(len(recs)),
            str(len(ctx.items(name))),
            str(len(labels)),
            str(len(labels - trained)),
            str(sum(len(r.wli) for r in recs)),
            str(len({p.type for r in recs for p in r.wli})),
            str(sum(not r.wli for r in recs)),
            f"{p50:.0f}",
            f"{p90:.0f}",
            f"{p99:.0f}",
            str(max(lens)),
        )
    return t


def counts_table(title: str, counts: Counter, total: int) -> Table:
    t = Table(title=title)
    t.add_column("value")
    t.add_column("count", justify="right")
    t.add_column("share", justify="right")
    for k, n in counts.most_common():
        t.add_row(str(k), str(n), f"{n / max(total, 1):.1%}")
    return t


def marked_prompt(ctx: TaskContext, e: Encoded) -> Text:
    """Prompt with the text in green «…», the anchor in yellow ⟨…⟩, q in red [q] and the answer."""
    dec = ctx.tokenizer.decode
    ids = e.prompt_ids
    (t0, t1), (a0, a1), q = e.text_range, e.anchor_range, e.q
    out = Text(dec(ids[:t0]))
    out.append("«" + dec(ids[t0:t1]) + "»", style="bold green")
    if a1 > a0:
        out.append(dec(ids[t1:a0]))
        out.append("⟨" + dec(ids[a0:a1]) + "⟩", style="bold yellow")
        out.append(dec(ids[a1:q]))
    else:
        out.append(dec(ids[t1:q]))
    out.append("[" + dec(ids[q : q + 1]) + "]q", style="bold red")
    out.append(dec(e.answer_ids), style="cyan")
    return out


def show(ctx: TaskContext, console: Console | None = None, n_examples: int = 3) -> None:
    """Print statistics and `n_examples` rendered prompts of the train split."""
    console = console or Console()
    console.print(split_stats(ctx))
    train = ctx.records("train")
    if any(r.tli is not None for r in train):
        console.print(counts_table("text labels (TLI), train", Counter(r.tli for r in train), len(train)))
    pairs = Counter(p.type for r in train for p in r.wli)
    console.print(counts_table("WLI types, train", pairs, sum(pairs.values())))
    builder = ctx.builder
    if builder.truncated:
        console.print(
            f"texts shortened to fit prompt.max_length={builder.max_length}: {builder.truncated} (WLI pairs "
            f"left out with the cut part: {builder.wli_cut})"
        )
    if builder.dropped:
        console.print(f"dropped while encoding: {dict(builder.dropped)}")
    console.print(f"tokenizer: {type(ctx.tokenizer).__name__}, {len(ctx.tokenizer)} tokens")
    s = ctx.setting
    setting = f"direction={s.direction} with_anchor={s.with_anchor}"
    console.print(f"\n[bold]{n_examples} prompts ({setting}); «text» ⟨anchor⟩ \\[q] answer:[/bold]")
    for e in ctx.items("train")[:n_examples]:
        console.print(marked_prompt(ctx, e))
        console.print()


def context_for_view(cfg, console: Console) -> TaskContext:
    """The config's context; a setting the data set cannot offer falls back to the one it can, saying so."""
    setting = Setting.from_config(cfg)
    try:
        return build_context(cfg, setting)
    except PromptError as err:
        if not setting.with_anchor:
            raise
        console.print(f"[yellow]{err}[/yellow]\nshowing with_anchor=false instead")
        return build_context(cfg, setting.without_anchor())
