"""Readers: every source format becomes `list[Record]`, with one bad-row policy for all of them.

`load_source(fmt, path, on_bad_row)` is the entry point; it finds the splits at `path`, runs the
format's reader on each file/folder with its own `RowIssues`, and logs the skip counts. Readers
never raise on a bad row themselves: a row-level problem becomes `_RowError`, which `_Collector`
hands to `RowIssues.bad` (stop with file + line, or count as skipped). Only problems that make the
whole file unreadable (a JSON list that does not parse, bio files with different line counts)
raise `DataFormatError` directly, whatever the policy.

Bytes are decoded with `surrogateescape`, so a stray non-UTF-8 byte costs its row, not the file.
Line numbers are 1-based physical lines (for a JSON list: the line where the item starts).
"""

from __future__ import annotations

import csv
import dataclasses
import difflib
import io
import json
import logging
import re
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from mre.data.record import DataFormatError, OnBadRow, Record, RowIssues, WLIPair
from mre.data.wli_format import WLIFormat
from mre.errors import ConfigError, MissingInputError

log = logging.getLogger(__name__)

FORMATS = ("records", "bio", "ner_json", "mmm", "giellm", "csv_pairs", "slurp")
SLURP_TLI_FIELDS = ("scenario", "intent", "action")  # the SLURP fields a text label can come from
MULTI_LABEL_SEP = "#"  # SNIPS/ATIS multi-intent labels: atis_flight#atis_airfare

_FORMAT_HELP: dict[str, str] = {
    "records": (
        "a .jsonl file with one record per line "
        '({"id", "text", "tli", "wli": [{"type", "span", "start", "end"}]}), a .json list of such '
        "records, or a folder holding train.jsonl/dev.jsonl/test.jsonl (any subset)"
    ),
    "bio": (
        "a folder with seq.in (space-separated tokens), seq.out (one BIO tag per token) and label "
        "(one intent per line), either directly or in train/dev (or valid)/test sub-folders, like SNIPS/ATIS"
    ),
    "ner_json": (
        'a JSON list of {"curid", "text", "entities": [{"name", "span": [start, end], "type"}]} '
        "objects with character offsets (ner-wikipedia-ja's ner.json), or a folder holding ner.json"
    ),
    "mmm": (
        'a .json list or .jsonl file of {"input": "<text>/<task>", '
        '"output": "<label>/<task>/:Type;Entity:Type;Entity"} objects (MMM / OIELLM), '
        "or a folder of train/dev/test .json/.jsonl files"
    ),
    "giellm": (
        'a .json list or .jsonl file of {"input": "<text>\\n<labels>\\n<task>", '
        '"output": "<label><task>:Type;Entity"} objects (GIELLM, labels in < > or ‹ ›), '
        "or a folder of train/dev/test .json/.jsonl files"
    ),
    "csv_pairs": (
        "a two-column csv of (source, target) in the GIELLM style, with or without a header row, "
        "like SCNM_Dataset.csv or TCREE_dataset.csv, or a folder of train/dev/test .csv files"
    ),
    "slurp": (
        'a SLURP .jsonl file of {"slurp_id", "sentence", "sentence_annotation", "scenario", "action", '
        '"intent", "tokens": [{"surface", "id"}], "entities": [{"type", "span": [token ids]}]} objects, '
        "or the folder of SLURP's text part holding devel.jsonl (the training split) and test.jsonl"
    ),
}

_SPLIT_NAMES = {"train": "train", "dev": "dev", "valid": "dev", "test": "test"}
_SPLIT_SUFFIXES = {
    "records": (".jsonl", ".json"),
    "ner_json": (".json", ".jsonl"),
    "mmm": (".json", ".jsonl"),
    "giellm": (".json", ".jsonl"),
    "csv_pairs": (".csv",),
    "slurp": (".jsonl",),
}
# SLURP's text part ships without its large training file: devel.jsonl is the training split here
_SLURP_SPLITS = {"devel": "train", "test": "test"}
_MMM_TASKS = (
    "NER",
    "Sentiment Relation Word",
    "Sentiment Adj and N",
    "Sentiment Adj",
    "Sentiment N",
    "Relation Extraction",
    "Event Extraction",
)
# GIELLM files mix ASCII and guillemet-style angle brackets (and their full-width cousins).
_OPEN, _CLOSE = "<‹＜〈", ">›＞〉"
_GIELLM_LABEL = re.compile(rf"\s*[{_OPEN}]\s*([^{_OPEN}{_CLOSE}]+?)\s*[{_CLOSE}]")
_BAD_BYTES = re.compile("[\udc80-\udcff]")
_JSON_WS = re.compile(r"[ \t\n\r]*")
_UNDECODABLE = "undecodable bytes (not UTF-8)"


class _RowError(ValueError):
    """A problem confined to one row; readers route it to `RowIssues.bad`."""


# --------------------------------------------------------------------------- shared plumbing


def _missing(path: Path, fmt: str) -> MissingInputError:
    """The one message for a missing source: what was looked for and what the format is."""
    return MissingInputError(f"{path} not found: the {fmt!r} format expects {_FORMAT_HELP[fmt]}.")


def _need_file(path: str | Path, fmt: str) -> Path:
    """Fail with the format description instead of a bare OSError when a reader's file is absent."""
    path = Path(path)
    if not path.is_file():
        raise _missing(path, fmt)
    return path


def _read_text(path: Path) -> str:
    """Decode UTF-8 keeping undecodable bytes as lone surrogates, so one bad byte costs one row."""
    return path.read_bytes().decode("utf-8", errors="surrogateescape").removeprefix("\ufeff")


def _lines(path: Path) -> list[str]:
    """Physical lines without line ends; a final newline does not add an empty line.

    Split on '\\n' only (not `splitlines`), so characters like U+2028 inside a text cannot shift
    the alignment of line-parallel files such as seq.in/seq.out/label.
    """
    lines = _read_text(path).split("\n")
    if lines[-1] == "":
        lines.pop()
    return [ln.removesuffix("\r") for ln in lines]


def _has_bad_bytes(*texts: str) -> bool:
    """True when a decoded string still carries an undecodable byte (a lone surrogate)."""
    return any(_BAD_BYTES.search(t) for t in texts)


class _Collector:
    """Routes each parsed row through the bad-row policy and keeps the accepted records.

    Checks common to every format live here: undecodable bytes, duplicate ids, and
    `RowIssues.accept` (empty text, spans outside the text or not matching it).
    """

    def __init__(self, issues: RowIssues) -> None:
        self.issues = issues
        self.records: list[Record] = []
        self._first_line: dict[str, int] = {}

    def add(self, line: int, make: Callable[..., Record], *args: Any) -> None:
        """Build a record with `make(*args)`; any `_RowError` or failed check is a bad row."""
        try:
            rec = make(*args)
        except _RowError as e:
            self.issues.bad(line, str(e))
            return
        if _has_bad_bytes(rec.text, rec.tli or "", *(p.type + p.span for p in rec.wli)):
            self.issues.bad(line, _UNDECODABLE)
            return
        if rec.id in self._first_line:
            self.issues.bad(line, f"duplicate id: {rec.id!r} (first on line {self._first_line[rec.id]})")
            return
        if self.issues.accept(line, rec) is not None:
            self._first_line[rec.id] = line
            self.records.append(dataclasses.replace(rec, origin=f"{self.issues.path}, line {line}"))


def _json_items(path: Path, issues: RowIssues) -> Iterator[tuple[int, int, Any]]:
    """Yield (line, item number, value) from a JSON list or a JSON-lines file.

    The layout is sniffed from the content rather than trusted from the suffix, because Hugging
    Face `to_json` writes JSON lines into `.json` files; `.jsonl` is always read as lines.
    """
    text = _read_text(path)
    head = text.lstrip(" \t\r\n")[:1]
    if head == "[" and path.suffix != ".jsonl":
        yield from _json_list(path, text)
        return
    if head not in ("{", "") and path.suffix != ".jsonl":
        raise DataFormatError(f"{path}: expected a JSON list of objects or one JSON object per line")
    if head == "{" and path.suffix != ".jsonl":
        _refuse_single_object(path, text)
    yield from _json_lines(text, issues)


def _refuse_single_object(path: Path, text: str) -> None:
    """A pretty-printed lone object would otherwise surface as a baffling 'broken JSON' on line 1."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return  # several objects: JSON lines
    if isinstance(value, dict) and "\n" in text.strip():
        raise DataFormatError(f"{path}: holds a single JSON object; expected a list of objects or JSON lines")


def _json_lines(text: str, issues: RowIssues) -> Iterator[tuple[int, int, Any]]:
    """One JSON value per line; blank lines are ignored, broken lines are bad rows."""
    for line, raw in enumerate(text.split("\n"), 1):
        s = raw.strip()
        if not s:
            continue
        if _has_bad_bytes(s):
            issues.bad(line, _UNDECODABLE)
            continue
        try:
            yield line, line, json.loads(s)
        except json.JSONDecodeError as e:
            issues.bad(line, f"broken JSON: {e}")


def _json_list(path: Path, text: str) -> Iterator[tuple[int, int, Any]]:
    """Items of a top-level JSON list with the line each starts on (for error messages).

    A list that does not parse is a whole-file error: there is no reliable next row to resume at.
    """
    decoder = json.JSONDecoder()
    pos = _JSON_WS.match(text).end() + 1  # past '['
    line, counted, item = 1, 0, 0
    try:
        while True:
            pos = _JSON_WS.match(text, pos).end()
            if item == 0 and text.startswith("]", pos):
                break
            value, end = decoder.raw_decode(text, pos)
            line, counted, item = line + text.count("\n", counted, pos), pos, item + 1
            yield line, item, value
            pos = _JSON_WS.match(text, end).end()
            if text.startswith("]", pos):
                break
            if not text.startswith(",", pos):
                raise json.JSONDecodeError("Expecting ',' delimiter", text, pos)
            pos += 1
        tail = _JSON_WS.match(text, pos + 1).end()
        if tail < len(text):
            raise json.JSONDecodeError("Extra data", text, tail)
    except json.JSONDecodeError as e:
        raise DataFormatError(f"{path}: broken JSON at line {e.lineno}, column {e.colno}: {e.msg}") from e


def _as_object(value: Any) -> dict[str, Any]:
    """Every JSON-based format stores one object per row."""
    if not isinstance(value, dict):
        raise _RowError(f"expected a JSON object, got {type(value).__name__}")
    return value


def _str_fields(obj: dict[str, Any], *names: str) -> tuple[str, ...]:
    """Required string fields of a row object, with a row-level error naming the first bad one."""
    for name in names:
        if name not in obj:
            raise _RowError(f"missing field {name!r}")
        if not isinstance(obj[name], str):
            raise _RowError(f"field {name!r} must be a string, got {type(obj[name]).__name__}")
    return tuple(obj[name] for name in names)


def _parse_pairs(s: str) -> list[tuple[str, str]]:
    """Parse `:Type;Entity:Type;Entity...` (MMM and GIELLM outputs) into (type, entity) pairs.

    A chunk without ';' continues the previous entity, so titles like `Star Wars: A New Hope`
    survive the ':' separator.
    """
    s = s.strip()
    if not s:
        return []
    if not s.startswith(":"):
        raise _RowError(f"word-level pairs must be written ':Type;Entity', got {s[:40]!r}")
    pairs: list[list[str]] = []
    for chunk in s[1:].split(":"):
        if ";" in chunk:
            typ, _, entity = chunk.partition(";")
            if not typ.strip():
                raise _RowError(f"empty type in pair: {':' + chunk!r}")
            pairs.append([typ.strip(), entity.strip()])
        elif pairs:
            pairs[-1][1] = f"{pairs[-1][1]}:{chunk}".strip()
        else:
            raise _RowError(f"pair lacks ';' between type and entity: {':' + chunk!r}")
    return [(t, e) for t, e in pairs]


def _locate(text: str, pairs: list[tuple[str, str]]) -> tuple[WLIPair, ...]:
    """Offsets from the entity's first occurrence in the text; None when it does not occur."""
    out = []
    for typ, entity in pairs:
        start = text.find(entity) if entity else -1
        out.append(WLIPair(typ, entity, *((start, start + len(entity)) if start >= 0 else (None, None))))
    return tuple(out)


# --------------------------------------------------------------------------- records


def _record_from_json(value: Any) -> Record:
    """Validate field presence and types first, so bad rows read 'missing field ...', not a traceback."""
    obj = _as_object(value)
    for key in ("id", "text"):
        if key not in obj:
            raise _RowError(f"missing field {key!r}")
    _str_fields(obj, "text")
    wli = obj.get("wli", [])
    if not isinstance(wli, list) or not all(isinstance(p, dict) for p in wli):
        raise _RowError("field 'wli' must be a list of {type, span, start, end} objects")
    for p in wli:
        for key in ("type", "span"):
            if key not in p:
                raise _RowError(f"missing field {key!r} in a wli pair")
        for key in ("start", "end"):
            v = p.get(key)
            if v is not None and (not isinstance(v, int) or isinstance(v, bool)):
                raise _RowError(f"field {key!r} of a wli pair must be an integer or null, got {v!r}")
    try:
        return Record.from_json(obj)
    except (KeyError, TypeError, ValueError) as e:
        raise _RowError(f"malformed record: {e}") from None


def read_records(path: str | Path, issues: RowIssues) -> list[Record]:
    """The project's own files (.jsonl, or a .json list); ids are the records' own, and must be unique."""
    path = _need_file(path, "records")
    col = _Collector(issues)
    for line, _item, value in _json_items(path, issues):
        col.add(line, _record_from_json, value)
    return col.records


# --------------------------------------------------------------------------- bio (SNIPS / ATIS)


def _bio_pairs(tokens: list[str], tags: list[str]) -> tuple[WLIPair, ...]:
    """B-x (I-x)* runs become pairs with char offsets into `" ".join(tokens)`.

    An I-x after O or after another type starts a new pair (lenient, as conlleval does).
    """
    starts, pos = [], 0
    for tok in tokens:
        starts.append(pos)
        pos += len(tok) + 1
    runs: list[list[Any]] = []  # [type, first token, last token]
    prev: str | None = None
    for i, tag in enumerate(tags):
        if tag == "O":
            prev = None
            continue
        kind, _, typ = tag.partition("-")
        if kind not in ("B", "I") or not typ:
            raise _RowError(f"unknown BIO tag: {tag!r} (expected O, B-<type> or I-<type>)")
        if kind == "I" and typ == prev:
            runs[-1][2] = i
        else:
            runs.append([typ, i, i])
        prev = typ
    text = " ".join(tokens)
    out = []
    for typ, first, last in runs:
        start, end = starts[first], starts[last] + len(tokens[last])
        out.append(WLIPair(typ, text[start:end], start, end))
    return tuple(out)


def _bio_record(rid: str, words: str, tags: str, label: str, sort_multi_labels: bool = False) -> Record:
    """One aligned line of seq.in / seq.out / label; with `sort_multi_labels`, a multi-intent label
    `b#a` is the same label as `a#b`."""
    for name, raw in (("seq.in", words), ("seq.out", tags), ("label", label)):
        if _has_bad_bytes(raw):
            raise _RowError(f"{_UNDECODABLE} in {name}")
    tokens, tag_list = words.split(), tags.split()
    if len(tokens) != len(tag_list):
        raise _RowError(f"token/tag count mismatch: {len(tokens)} tokens, {len(tag_list)} tags")
    if not tokens:
        raise _RowError("empty text")
    if not label.strip():
        raise _RowError("empty intent label")
    label = label.strip()
    if sort_multi_labels:
        label = MULTI_LABEL_SEP.join(sorted(label.split(MULTI_LABEL_SEP)))
    return Record(rid, " ".join(tokens), label, _bio_pairs(tokens, tag_list))


def read_bio_split(folder: str | Path, issues: RowIssues, sort_multi_labels: bool = False) -> list[Record]:
    """One split folder (seq.in, seq.out, label); ids are `<folder name>-<line>`.

    Different line counts mean the files are misaligned, so every row would be suspect: that is
    a whole-file error whatever the bad-row policy.
    """
    folder = Path(folder)
    files = {name: _lines(_need_file(folder / name, "bio")) for name in ("seq.in", "seq.out", "label")}
    counts = {name: len(lines) for name, lines in files.items()}
    if len(set(counts.values())) > 1:
        listed = ", ".join(f"{name} has {n}" for name, n in counts.items())
        raise DataFormatError(f"{folder}: line counts differ, {listed} lines (they must be line-aligned)")
    col = _Collector(issues)
    for line, (words, tags, label) in enumerate(zip(*files.values(), strict=True), 1):
        col.add(line, _bio_record, f"{folder.name}-{line}", words, tags, label, sort_multi_labels)
    return col.records


# --------------------------------------------------------------------------- ner-wikipedia-ja


def _entity_pair(ent: Any) -> WLIPair:
    """One `{"name", "span": [s, e], "type"}` entity; `RowIssues.accept` checks text[s:e] == name."""
    name, typ = _str_fields(_as_object(ent), "name", "type")
    span = ent.get("span")
    if not (
        isinstance(span, list)
        and len(span) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) for v in span)
    ):
        raise _RowError(f"bad entity span: expected [start, end], got {span!r}")
    return WLIPair(typ, name, span[0], span[1])


def _ner_record(rid: str, value: Any) -> Record:
    obj = _as_object(value)
    (text,) = _str_fields(obj, "text")
    entities = obj.get("entities")
    if not isinstance(entities, list):
        raise _RowError("missing field 'entities'" if entities is None else "field 'entities' must be a list")
    return Record(rid, text, None, tuple(_entity_pair(e) for e in entities))


def read_ner_json(path: str | Path, issues: RowIssues) -> list[Record]:
    """ner-wikipedia-ja: ids are the curid; sentences sharing an article's curid get `#2`, `#3`, ..."""
    path = _need_file(path, "ner_json")
    col = _Collector(issues)
    seen: Counter[str] = Counter()
    for line, item, value in _json_items(path, issues):
        curid = value.get("curid") if isinstance(value, dict) else None
        base = f"{path.stem}-{item}" if curid is None else str(curid)
        seen[base] += 1
        rid = base if seen[base] == 1 else f"{base}#{seen[base]}"
        col.add(line, _ner_record, rid, value)
    return col.records


# --------------------------------------------------------------------------- MMM / OIELLM


def _split_mmm_input(inp: str, out: str) -> tuple[str, str]:
    """`<text>/<task>` -> (text, task), taking the LAST '/' since texts may contain slashes.

    Besides the known task words, any suffix is accepted that the output repeats as `/<task>/`.
    """
    cut = inp.rfind("/")
    if cut < 0:
        raise _RowError("input has no '/<task>' suffix")
    text, task = inp[:cut].strip(), inp[cut + 1 :].strip()
    if task not in _MMM_TASKS and f"/{task}/" not in out:
        raise _RowError(f"unknown task: {task!r} (known: {', '.join(_MMM_TASKS)})")
    return text, task


def _split_mmm_output(out: str, task: str) -> tuple[str, list[tuple[str, str]]]:
    """`<label>/<task>/:Type;Entity...` -> (label, pairs); a bare `<label>/<task>` has no pairs."""
    out = out.strip()
    marker = f"/{task}/"
    cut = out.find(marker)
    if cut >= 0:
        label, rest = out[:cut].strip(), out[cut + len(marker) :]
    elif out.endswith(f"/{task}"):
        label, rest = out[: -len(task) - 1].strip(), ""
    else:
        raise _RowError(f"output lacks {marker!r} after the text-level label")
    if not label:
        raise _RowError(f"missing text-level label before {marker!r}")
    return label, _parse_pairs(rest)


def _mmm_record(rid: str, value: Any) -> Record:
    inp, out = _str_fields(_as_object(value), "input", "output")
    text, task = _split_mmm_input(inp, out)
    label, pairs = _split_mmm_output(out, task)
    return Record(rid, text, label, _locate(text, pairs))


def read_mmm(path: str | Path, issues: RowIssues) -> list[Record]:
    """MMM / OIELLM instruction pairs (.json list or .jsonl); ids are `<stem>-<item>`."""
    path = _need_file(path, "mmm")
    col = _Collector(issues)
    for line, item, value in _json_items(path, issues):
        col.add(line, _mmm_record, f"{path.stem}-{item}", value)
    return col.records


# --------------------------------------------------------------------------- GIELLM / csv pairs


def _parse_giellm_output(out: str) -> tuple[str, str, list[tuple[str, str]]]:
    """`<label>task:Type;Entity...` -> (label, task, pairs); either bracket style, even mixed."""
    m = _GIELLM_LABEL.match(out)
    if m is None:
        raise _RowError(f"output does not start with a <label> or ‹label›: {out.strip()[:40]!r}")
    rest = out[m.end() :].strip()
    cut = rest.find(":")
    if cut < 0:
        return m.group(1), rest, []
    return m.group(1), rest[:cut].strip(), _parse_pairs(rest[cut:])


def _giellm_record(rid: str, source: str, target: str) -> Record:
    """The text is the first line of the instruction; the label list and task name follow it."""
    text = source.strip().split("\n", 1)[0].strip()
    label, _task, pairs = _parse_giellm_output(target)
    return Record(rid, text, label, _locate(text, pairs))


def _giellm_item(rid: str, value: Any) -> Record:
    source, target = _str_fields(_as_object(value), "input", "output")
    return _giellm_record(rid, source, target)


def read_giellm(path: str | Path, issues: RowIssues) -> list[Record]:
    """GIELLM instruction pairs (.json list or .jsonl); ids are `<stem>-<item>`."""
    path = _need_file(path, "giellm")
    col = _Collector(issues)
    for line, item, value in _json_items(path, issues):
        col.add(line, _giellm_item, f"{path.stem}-{item}", value)
    return col.records


def _csv_rows(path: Path) -> Iterator[tuple[int, list[str]]]:
    """Non-blank csv rows with the physical line each starts on (cells may span lines)."""
    reader = csv.reader(io.StringIO(_read_text(path), newline=""))
    end = 0
    try:
        for row in reader:
            start, end = end + 1, reader.line_num
            if any(cell.strip() for cell in row):
                yield start, row
    except csv.Error as e:
        raise DataFormatError(f"{path}, line {reader.line_num}: unreadable csv: {e}") from e


def _csv_record(rid: str, row: list[str]) -> Record:
    if len(row) != 2:
        raise _RowError(f"wrong column count: expected 2 (source, target), found {len(row)}")
    return _giellm_record(rid, row[0], row[1])


def _is_header(row: list[str]) -> bool:
    """A header's target column is a column name; every data row's target starts with a <label>."""
    return len(row) == 2 and not row[1].lstrip().startswith(tuple(_OPEN))


def read_csv_pairs(path: str | Path, issues: RowIssues) -> list[Record]:
    """SCNM/TCREE-style (source, target) csv; ids are `<stem>-<line where the row starts>`."""
    path = _need_file(path, "csv_pairs")
    col = _Collector(issues)
    for n, (line, row) in enumerate(_csv_rows(path)):
        if n == 0 and _is_header(row):
            continue
        col.add(line, _csv_record, f"{path.stem}-{line}", row)
    return col.records


# --------------------------------------------------------------------------- SLURP

# `[type : words]` in SLURP's sentence_annotation
_SLURP_ANNOTATION = re.compile(r"\[\s*([^\[\]:]+?)\s*:\s*([^\[\]]*?)\s*\]")
_SPAN_EDGE = " ,.;:!?"  # trimmed off a mapped span: SLURP's annotations never start or end with these


def _words_key(s: str) -> str:
    """What an entity's words and its annotation must share: letters and digits, case-folded.

    SLURP's tokens split clitics (`restaurant 's`) and keep case the sentence lower-cases; neither
    is a disagreement about which words the entity is.
    """
    return re.sub(r"[\W_]", "", s.casefold())


def _align_chars(a: str, b: str) -> tuple[list[int], list[int]]:
    """For each character of `a`: where it starts and ends in `b` (case-insensitive character diff).

    SLURP's tokens are the transcript before normalization (`Friday`, `rihana`, `@comcast`), its
    sentence the normalized text (`friday`, `rihanna`, `at comcast`): a replaced stretch maps to the
    whole stretch of `b` that replaced it, so an entity still lands on the sentence's own words.
    """
    first, after = [0] * len(a), [0] * len(a)
    ops = difflib.SequenceMatcher(None, a.lower(), b.lower(), autojunk=False).get_opcodes()
    for tag, i1, i2, j1, j2 in ops:
        for i in range(i1, i2):
            first[i], after[i] = (j1 + i - i1, j1 + i - i1 + 1) if tag == "equal" else (j1, j2)
    return first, after


def _slurp_tokens(obj: dict[str, Any]) -> list[str]:
    """Token surfaces in id order; ids must be 0, 1, 2, ... since entity spans index them."""
    tokens = obj.get("tokens")
    if not isinstance(tokens, list) or not all(isinstance(t, dict) for t in tokens):
        raise _RowError(
            "missing field 'tokens'" if tokens is None else "field 'tokens' must be a list of objects"
        )
    surfaces = []
    for n, tok in enumerate(tokens):
        (surface,) = _str_fields(tok, "surface")
        if not surface:
            raise _RowError(f"token {n} has an empty surface")
        if tok.get("id") != n:
            raise _RowError(f"token {n} has id {tok.get('id')!r}; expected ids 0, 1, 2, ... in order")
        surfaces.append(surface)
    return surfaces


def _slurp_entity(ent: Any, n_tokens: int) -> tuple[str, int, int]:
    """(type, first token, last token) of one `{"type", "span": [token ids]}` entity."""
    (typ,) = _str_fields(_as_object(ent), "type")
    span = ent.get("span")
    if not (
        isinstance(span, list) and span and all(isinstance(v, int) and not isinstance(v, bool) for v in span)
    ):
        raise _RowError(f"entity {typ!r}: bad span {span!r}, expected a non-empty list of token ids")
    if min(span) < 0 or max(span) >= n_tokens:
        raise _RowError(f"entity {typ!r}: span {span} is out of range for {n_tokens} tokens")
    if span != list(range(span[0], span[-1] + 1)):
        raise _RowError(f"entity {typ!r}: span {span} is not consecutive token ids")
    return typ, span[0], span[-1]


def _token_offsets(surfaces: list[str], sentence: str) -> list[tuple[int, int]]:
    """(start, end) of each token in the sentence, through a character alignment of the tokens
    (joined by spaces) with the sentence."""
    first, after = _align_chars(" ".join(surfaces), sentence)
    out, pos = [], 0
    for s in surfaces:
        out.append((first[pos], after[pos + len(s) - 1]))
        pos += len(s) + 1
    return out


def _trimmed(text: str, start: int, end: int) -> tuple[int, int]:
    """`text[start:end]` without the spaces and punctuation at its ends (a token `,` inside an entity)."""
    span = text[start:end]
    return start + len(span) - len(span.lstrip(_SPAN_EDGE)), end - len(span) + len(span.rstrip(_SPAN_EDGE))


def _slurp_pairs(obj: dict[str, Any], sentence: str, annotation: str) -> tuple[WLIPair, ...]:
    """The entities as sentence offsets, each checked against its `[type : words]` in the annotation
    (matched in order of position)."""
    surfaces = _slurp_tokens(obj)
    entities = obj.get("entities")
    if not isinstance(entities, list):
        raise _RowError("missing field 'entities'" if entities is None else "field 'entities' must be a list")
    spans = sorted((_slurp_entity(e, len(surfaces)) for e in entities), key=lambda e: e[1])
    annotated = _SLURP_ANNOTATION.findall(annotation)
    if len(annotated) != len(spans):
        raise _RowError(f"{len(spans)} entities but {len(annotated)} [type : words] in sentence_annotation")
    offsets = _token_offsets(surfaces, sentence)
    pairs = []
    for (typ, i, j), (ann_type, ann_words) in zip(spans, annotated, strict=True):
        words = " ".join(surfaces[i : j + 1])
        if typ != ann_type or _words_key(words) != _words_key(ann_words):
            raise _RowError(
                f"entity {typ} {words!r} (tokens {i}-{j}) does not match its annotation "
                f"[{ann_type} : {ann_words}]"
            )
        start, end = _trimmed(sentence, offsets[i][0], offsets[j][1])
        if start >= end:
            raise _RowError(f"entity {typ} {words!r} (tokens {i}-{j}) maps to no text of the sentence")
        pairs.append(WLIPair(typ, sentence[start:end], start, end))
    return tuple(pairs)


def _slurp_record(value: Any, tli_field: str) -> Record:
    obj = _as_object(value)
    sentence, annotation, label = _str_fields(obj, "sentence", "sentence_annotation", tli_field)
    if "slurp_id" not in obj:
        raise _RowError("missing field 'slurp_id'")
    return Record(str(obj["slurp_id"]), sentence, label.strip(), _slurp_pairs(obj, sentence, annotation))


def read_slurp(path: str | Path, issues: RowIssues, tli_field: str = "scenario") -> list[Record]:
    """SLURP jsonl (text part): text = `sentence`, TLI = the `tli_field` (scenario, intent or action),
    WLI = the entities, mapped from token ids to offsets in the sentence; ids are the `slurp_id`."""
    if tli_field not in SLURP_TLI_FIELDS:
        raise ValueError(
            f"unknown SLURP text label field {tli_field!r}; choose one of: {', '.join(SLURP_TLI_FIELDS)}"
        )
    path = _need_file(path, "slurp")
    col = _Collector(issues)
    for line, _item, value in _json_items(path, issues):
        col.add(line, _slurp_record, value, tli_field)
    return col.records


# --------------------------------------------------------------------------- entry point

_READERS: dict[str, Callable[[Path, RowIssues], list[Record]]] = {
    "records": read_records,
    "bio": read_bio_split,
    "ner_json": read_ner_json,
    "mmm": read_mmm,
    "giellm": read_giellm,
    "csv_pairs": read_csv_pairs,
    "slurp": read_slurp,
}


def _pick_splits(path: Path, fmt: str, candidates: dict[str, list[Path]]) -> dict[str, Path]:
    """Keep the splits that exist, in train/dev/test order; two sources for one split is ambiguous."""
    found: dict[str, Path] = {}
    for split in ("train", "dev", "test"):
        hits = candidates.get(split, [])
        if len(hits) > 1:
            names = " and ".join(h.name for h in hits)
            raise DataFormatError(f"{path}: both {names} exist for split {split!r} ({fmt} format); keep one")
        if hits:
            found[split] = hits[0]
    return found


def _bio_sources(path: Path) -> dict[str, Path]:
    """Split sub-folders (valid -> dev), else the folder itself when it holds seq.in directly."""
    if not path.is_dir():
        raise MissingInputError(f"{path} is not a folder: the 'bio' format expects {_FORMAT_HELP['bio']}.")
    candidates: dict[str, list[Path]] = {}
    for name, split in _SPLIT_NAMES.items():
        if (path / name).is_dir():
            candidates.setdefault(split, []).append(path / name)
    found = _pick_splits(path, "bio", candidates)
    if found:
        return found
    if (path / "seq.in").exists():
        return {"all": path}
    raise _missing(path / "seq.in", "bio")


def _file_sources(path: Path, fmt: str) -> dict[str, Path]:
    """A file is the 'all' split; a folder contributes its `<split><suffix>` files."""
    if path.is_file():
        return {"all": path}
    if fmt == "ner_json" and (path / "ner.json").is_file():
        return {"all": path / "ner.json"}
    candidates: dict[str, list[Path]] = {}
    split_names = _SLURP_SPLITS if fmt == "slurp" else _SPLIT_NAMES
    for name, split in split_names.items():
        for suffix in _SPLIT_SUFFIXES[fmt]:
            if (path / f"{name}{suffix}").is_file():
                candidates.setdefault(split, []).append(path / f"{name}{suffix}")
    found = _pick_splits(path, fmt, candidates)
    if not found:
        names = " or ".join(f"{next(iter(split_names))}{s}" for s in _SPLIT_SUFFIXES[fmt])
        held = sorted(p.name for p in path.iterdir())[:8]
        raise MissingInputError(
            f"{path} is a folder without split files ({names}, and likewise dev/test; it holds "
            f"{held or 'nothing'}): the {fmt!r} format expects {_FORMAT_HELP[fmt]}."
        )
    return found


def load_source(
    fmt: str,
    path: str | Path,
    on_bad_row: OnBadRow = OnBadRow.error,
    sort_multi_labels: bool = False,
    wli_format: WLIFormat | None = None,
    tli_field: str = "scenario",
) -> dict[str, list[Record]]:
    """Named splits found at `path`: {"train", "dev", "test"} (those present) for folder sources
    with split sub-folders/files, else {"all": [...]}. `sort_multi_labels` (BIO only): `b#a` = `a#b`.
    `tli_field` (SLURP only): the field the text label comes from.
    With `wli_format`, a WLI pair it cannot serialize (`WLIFormat.problem`) is a bad row.

    Each file gets its own `RowIssues`, so error messages and skip counts name the exact file.
    """
    if fmt not in FORMATS:
        raise ConfigError(f"unknown data format {fmt!r}; choose one of: {', '.join(FORMATS)}")
    on_bad_row = OnBadRow(on_bad_row)  # before any file is read
    path = Path(path)
    if not path.exists():
        raise _missing(path, fmt)
    sources = _bio_sources(path) if fmt == "bio" else _file_sources(path, fmt)
    out: dict[str, list[Record]] = {}
    for split, src in sources.items():
        issues = RowIssues(src, on_bad_row, wli_format.problem if wli_format else None)
        if fmt == "bio":
            out[split] = read_bio_split(src, issues, sort_multi_labels)
        elif fmt == "slurp":
            out[split] = read_slurp(src, issues, tli_field)
        else:
            out[split] = _READERS[fmt](src, issues)
        issues.report()
        if not out[split]:
            log.warning("%s: no records read (%s format)", src, fmt)
    return out
