"""The one resumable per-sample stream of the analyses: the flow (`flow_run`), the knockout
(`knockout_run`) and the flow by group (`flow_groups`) are each a per-chunk function on it.

A stream measures the seeded selection of test samples (`mre.flow.samples.select_samples`, the
training callback's too) in fixed chunks and appends each chunk's rows to a CSV file in one flushed
write (`mre.results`), so memory stays flat and a killed analysis keeps what it computed. A rerun

* refuses a file made with other settings (the identity in the meta file beside it, e.g.
  `FlowOptions.measurement()` with the samples' hash) instead of mixing two analyses, unless asked to
  start over;
* drops a torn last line and every incomplete sample (the file is rewritten with the complete ones);
* recomputes the unfinished chunks with the same composition (same padding, so the same numbers),
  the per-chunk function writing only the samples still missing;
* shows its progress with `rich.progress`.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
from collections.abc import Callable, Hashable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from mre.data.prompts import Encoded
from mre.errors import UserError
from mre.flow.samples import select_samples
from mre.results import append_stream_csv, read_stream_csv, write_stream_csv

Row = dict[str, str]
# (chunk number, the chunk's samples, the keys of those still missing) -> the rows of those samples
ChunkFunction = Callable[[int, list[Encoded], set[Hashable]], list[dict[str, Any]]]


class AnalysisError(UserError, RuntimeError):
    """The analysis cannot run with this input (with what to do instead)."""


def choose(items: list[Encoded], n: int | None, seed: int) -> list[Encoded]:
    """The seeded selection of n of `items` (all of them for None), in their order."""
    try:
        return [items[i] for i in select_samples(len(items), n, seed)]
    except ValueError as e:
        raise AnalysisError(str(e)) from e


def samples_sha1(ids: Sequence[str]) -> str:
    """The identity of a selection: the hash of its ids, one a line."""
    return hashlib.sha1("\n".join(ids).encode("utf-8")).hexdigest()


def refuse_other_settings(samples: Path, old: dict[str, Any], meta: dict[str, Any], restart: str) -> None:
    """A partial samples file made with other settings (`old`, from its meta file) is never resumed:
    the error names each differing setting and the `restart` override that starts over."""
    diff = [k for k in meta if k != "subject" and old.get(k) != meta[k]]
    if diff:
        detail = "; ".join(f"{k}: {old.get(k)!r} then, {meta[k]!r} now" for k in diff)
        raise AnalysisError(
            f"{samples} was made with other settings ({detail}). Resuming would mix two analyses: "
            f"rerun with the same settings, or with {restart} to start over."
        )


@dataclass
class Identity:
    """The settings behind a samples file, kept as JSON in `path` (written with the first rows).
    `meta` may gain entries a first chunk learns (the flow's `n_layers`) before it is written."""

    path: Path
    meta: dict[str, Any]
    restart: bool  # start over instead of resuming
    restart_hint: str  # the override that starts over, for the refusal's message
    follows: tuple[Path, ...] = ()  # files derived under these settings, removed with a fresh start


@contextlib.contextmanager
def progress(enabled: bool, total: int, completed: int, description: str) -> Iterator[Callable[[int], None]]:
    """A rich progress bar over samples (hidden unless `enabled`), as `advance(n)`."""
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, disable=not enabled) as bar:
        task = bar.add_task(description, total=total, completed=completed)
        yield lambda n: bar.advance(task, n)


@dataclass
class SampleStream:
    """One samples file: its schema, how a row names its sample (`row_key`) and an encoded sample its
    own (`sample_key`), and when a sample's rows are complete."""

    path: Path
    columns: Sequence[str]
    row_key: Callable[[Row], Hashable]
    sample_key: Callable[[Encoded], Hashable]
    complete: Callable[[Hashable, list[Row]], bool]
    quoting: int = csv.QUOTE_ALL
    identity: Identity | None = None

    def previous(self) -> dict[str, Any] | None:
        """The meta of a partial file made with these settings (None: starting fresh, any old file,
        its meta and the files that follow it removed). Another setting is refused."""
        ident = self.identity
        if ident is None:
            return None
        if ident.restart or not ident.path.exists() or not self.path.exists():
            for p in (ident.path, self.path, *ident.follows):
                p.unlink(missing_ok=True)
            return None
        old = json.loads(ident.path.read_text())
        refuse_other_settings(self.path, old, ident.meta, ident.restart_hint)
        return old

    def done(self) -> dict[Hashable, list[Row]]:
        """The complete samples of the file, by key, in the file's order (the file is cut back to them)."""
        rows = read_stream_csv(self.path, self.columns)
        by: dict[Hashable, list[Row]] = {}
        for r in rows:
            by.setdefault(self.row_key(r), []).append(r)
        done = {k: rs for k, rs in by.items() if self.complete(k, rs)}
        write_stream_csv(self.path, self.columns, [r for r in rows if self.row_key(r) in done], self.quoting)
        return done

    def run(
        self, chosen: list[Encoded], batch_size: int, per_chunk: ChunkFunction, show: bool, description: str
    ) -> None:
        """Stream the rows of every missing sample of `chosen`, in chunks of `batch_size`. Call
        `previous()` first when the stream has an identity."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        done = set(self.done())
        chunks = [chosen[i : i + batch_size] for i in range(0, len(chosen), batch_size)]
        n_done = sum(self.sample_key(e) in done for e in chosen)
        with progress(show, len(chosen), n_done, description) as advance:
            for k, chunk in enumerate(chunks):
                todo = {self.sample_key(e) for e in chunk} - done
                if not todo:
                    continue
                rows = per_chunk(k, chunk, todo)
                self._write_identity()  # with what the first chunk learnt, before its rows
                append_stream_csv(self.path, self.columns, rows, self.quoting)
                advance(len(todo))
        self._write_identity()

    def _write_identity(self) -> None:
        if self.identity is not None and not self.identity.path.exists():
            self.identity.path.write_text(json.dumps(self.identity.meta, indent=2))

    def sort(self, key: Callable[[Row], Any]) -> list[Row]:
        """The file's rows in `key` order, rewritten so when they were not (a resumed file = an
        uninterrupted one)."""
        rows = read_stream_csv(self.path, self.columns)
        ordered = sorted(rows, key=key)
        if ordered != rows:
            write_stream_csv(self.path, self.columns, ordered, self.quoting)
        return ordered
