"""What every run leaves in its directory: metrics.json, predictions.jsonl, and a printed table; the
gathering of per-sample rows from every rank; and the project's one CSV stream (`read_stream_csv`,
`write_stream_csv`, `append_stream_csv`): files appended chunk by chunk whose torn last line is dropped
on reading (the analyses' samples files, `mre.analysis.stream`, and the flow's `mre.flow.files`)."""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch.distributed as dist
from rich.console import Console
from rich.table import Table

from mre.errors import UserError


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


class StreamFileError(UserError, ValueError):
    """A stream CSV file has other columns than the ones asked for (another schema or version)."""


def read_stream_csv(path: str | Path, columns: Sequence[str]) -> list[dict[str, str]]:
    """The rows of a CSV file appended chunk by chunk (`append_stream_csv`), without a torn last line
    (a writer killed mid-line: an unterminated line, or a last record with too few fields); [] when the
    file does not exist or is empty."""
    path = Path(path)
    if not path.exists():
        return []
    with open(path, newline="", encoding="utf-8") as f:  # a field's carriage return kept as written
        text = f.read()
    text = text[: text.rfind("\n") + 1]
    reader = csv.reader(io.StringIO(text, newline=""))  # fields may hold line breaks
    header = next(reader, None)
    if header is None:
        return []
    if header != list(columns):
        raise StreamFileError(f"{path} has the columns {header}, not {list(columns)} (another file version?)")
    rows = []
    for rec in reader:
        if len(rec) != len(header):
            break
        rows.append(dict(zip(header, rec, strict=True)))
    return rows


def _csv_text(columns: Sequence[str], rows: Iterable[dict[str, Any]], header: bool, quoting: int) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, list(columns), lineterminator="\n", quoting=quoting)
    if header:
        w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def write_stream_csv(
    path: str | Path, columns: Sequence[str], rows: Iterable[dict[str, Any]], quoting: int = csv.QUOTE_ALL
) -> Path:
    """The whole file (header and rows), atomically (a temporary file renamed over it), so a kill
    leaves the old file or the new one. `quoting`: every field quoted by default (generated answers
    may hold a carriage return, which csv only quotes when asked to); the flow's numeric files use
    `csv.QUOTE_MINIMAL`."""
    path = Path(path)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(_csv_text(columns, rows, True, quoting), encoding="utf-8")
    os.replace(tmp, path)
    return path


def append_stream_csv(
    path: str | Path, columns: Sequence[str], rows: Iterable[dict[str, Any]], quoting: int = csv.QUOTE_ALL
) -> None:
    """Rows appended in one flushed write: a kill tears at most this chunk's last line."""
    with open(path, "a", newline="", encoding="utf-8") as f:
        f.write(_csv_text(columns, rows, False, quoting))
        f.flush()
