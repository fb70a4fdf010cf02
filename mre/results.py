"""What every run leaves in its directory: metrics.json, predictions.jsonl, and a printed table; and
the gathering of per-sample rows from every rank."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import torch.distributed as dist
from rich.console import Console
from rich.table import Table


def gather_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """All ranks' rows on every rank, de-duplicated by `id` and sorted by it (distributed samplers
    pad the last batch with repeats)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        parts: list[list[dict[str, Any]]] = [[] for _ in range(dist.get_world_size())]
        dist.all_gather_object(parts, rows)
        rows = [r for part in parts for r in part]
    unique = {r["id"]: r for r in rows}
    return sorted(unique.values(), key=lambda r: r["id"])


def write_jsonl(path: str | Path, rows: list[dict[str, Any]]) -> None:
    """One JSON object per line, UTF-8 kept readable (Japanese stays Japanese)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def write_metrics(path: str | Path, metrics: dict[str, float]) -> None:
    """Flat `{"test/f1": 0.71, ...}`: what analyze.py and sweeps read back."""
    Path(path).write_text(json.dumps(dict(sorted(metrics.items())), indent=2))


def print_metrics(metrics: dict[str, float], title: str, output_dir: Path) -> None:
    """The final table a user sees (per-type scores stay in metrics.json)."""
    table = Table(title=f"test metrics: {title}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for k, v in metrics.items():
        if "/f1_type/" not in k:
            table.add_row(k, f"{v:.4f}")
    console = Console()
    console.print(table)
    console.print(f"run directory: {output_dir}", soft_wrap=True)


def read_stream_csv(path: str | Path) -> list[dict[str, str]]:
    """The rows of a CSV file appended chunk by chunk (`append_stream_csv`), without a torn last line
    (a writer killed mid-line); [] when the file does not exist."""
    path = Path(path)
    if not path.exists():
        return []
    text = path.read_text(encoding="utf-8")
    text = text[: text.rfind("\n") + 1]
    return list(csv.DictReader(io.StringIO(text, newline="")))  # fields may hold line breaks


def append_stream_csv(path: str | Path, columns: list[str], rows: list[dict[str, Any]], new: bool) -> None:
    """Write (`new`: header first, replacing the file) or append rows in one flushed write, every field
    quoted: generated answers may hold a carriage return, which csv only quotes when asked to."""
    with open(path, "w" if new else "a", newline="", encoding="utf-8") as f:
        buf = io.StringIO()
        w = csv.DictWriter(buf, columns, lineterminator="\n", quoting=csv.QUOTE_ALL)
        if new:
            w.writeheader()
        w.writerows(rows)
        f.write(buf.getvalue())  # one write per chunk: a kill tears at most this chunk
        f.flush()
