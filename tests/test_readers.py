"""Readers: real SNIPS / ner-wikipedia-ja files, a fixture per documented format, and every bad-row kind
under both policies (error: file + line + problem in the message; skip: good rows kept, skips logged)."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest

from mre.data.readers import FORMATS, load_source
from mre.data.record import DataFormatError, Record, WLIPair
from mre.data.wli_format import WLIFormat


def _shared_data() -> Path:
    env = os.environ.get("MRE_SHARED_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="module")
def shared_data() -> Path:
    root = _shared_data()
    if not root.is_dir():
        pytest.skip(f"real data folder {root} is absent (set MRE_SHARED_DATA to point at it)")
    return root


def _check_offsets(records: list[Record]) -> None:
    for rec in records:
        for p in rec.wli:
            assert p.start is not None and p.end is not None, (rec.id, p)
            assert rec.text[p.start : p.end] == p.span, (rec.id, p)


def _write(path: Path, content: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, str):
        content = content.encode("utf-8")
    path.write_bytes(content)
    return path


def _bio(folder: Path, words: list[bytes], tags: list[bytes], labels: list[bytes]) -> Path:
    for name, lines in (("seq.in", words), ("seq.out", tags), ("label", labels)):
        _write(folder / name, b"".join(line + b"\n" for line in lines))
    return folder


def _json_list_file(path: Path, items: list[object]) -> Path:
    """One item per line, so item k starts on line k + 1 (line 1 holds the '[')."""
    return _write(path, "[\n" + ",\n".join(json.dumps(i, ensure_ascii=False) for i in items) + "\n]\n")


def _jsonl(path: Path, items: list[object]) -> Path:
    return _write(path, "".join(json.dumps(i, ensure_ascii=False) + "\n" for i in items))


# ------------------------------------------------------------------------------------------ real files


def test_snips_real_splits_labels_and_offsets(shared_data: Path) -> None:
    data = load_source("bio", shared_data / "snips")
    assert {k: len(v) for k, v in data.items()} == {"train": 13084, "dev": 700, "test": 700}
    assert len({r.tli for r in data["train"]}) == 7
    assert {r.tli for r in data["dev"] + data["test"]} <= {r.tli for r in data["train"]}
    assert len({p.type for rs in data.values() for r in rs for p in r.wli}) == 39
    ex = next(r for r in data["test"] if r.text == "add sabrina salerno to the grime instrumentals playlist")
    assert ex.tli == "AddToPlaylist"
    assert ex.wli == (
        WLIPair("artist", "sabrina salerno", 4, 19),
        WLIPair("playlist", "grime instrumentals", 27, 46),
    )
    for records in data.values():
        _check_offsets(records)
        assert all(r.text == r.text.strip() and "  " not in r.text for r in records)
    ids = [r.id for rs in data.values() for r in rs]
    assert len(set(ids)) == len(ids)


def test_ner_wikipedia_ja_real(shared_data: Path) -> None:
    data = load_source("ner_json", shared_data / "ner-wikipedia-ja")  # folder holding ner.json
    assert list(data) == ["all"]
    records = data["all"]
    assert len(records) == 5343
    assert {p.type for r in records for p in r.wli} == {
        "人名",
        "法人名",
        "政治的組織名",
        "その他の組織名",
        "地名",
        "施設名",
        "製品名",
        "イベント名",
    }
    assert all(r.tli is None for r in records)
    assert 0.07 < sum(not r.wli for r in records) / len(records) < 0.13
    _check_offsets(records)
    assert len({r.id for r in records}) == len(records)  # curids repeat across sentences of one article
    assert records[0].id == "3572156"
    assert records[0].wli == (WLIPair("その他の組織名", "SPRiNGS", 0, 7),)


# ------------------------------------------------------------------------------------------ fixtures


def _recs() -> list[Record]:
    return [
        Record("a", "Steve Jobs founded Apple.", "Business", (WLIPair("person", "Steve Jobs", 0, 10),)),
        Record("b", "It rained.", None, ()),
        Record("c", "Apple pie", "Food", (WLIPair("dish", "Apple pie", None, None),)),
    ]


def test_records_jsonl_json_and_folder_round_trip(tmp_path: Path) -> None:
    recs = _recs()
    jsonl = _jsonl(tmp_path / "r.jsonl", [r.to_json() for r in recs])
    assert load_source("records", jsonl) == {"all": recs}
    as_list = _write(tmp_path / "r.json", json.dumps([r.to_json() for r in recs], indent=2))
    assert load_source("records", as_list) == {"all": recs}
    folder = tmp_path / "splits"
    _jsonl(folder / "train.jsonl", [r.to_json() for r in recs[:2]])
    _jsonl(folder / "test.jsonl", [r.to_json() for r in recs[2:]])
    assert load_source("records", folder) == {"train": recs[:2], "test": recs[2:]}


def test_bio_folder_with_valid_split_and_lenient_tags(tmp_path: Path) -> None:
    root = tmp_path / "atis"
    _bio(
        root / "train",
        [b"add  sabrina salerno to my list ", b"book it now"],
        [b"O B-artist I-artist O O B-playlist ", b"O I-thing B-time"],
        [b"AddToPlaylist", b"a#b"],
    )
    _bio(root / "valid", [b"play jazz"], [b"O B-genre"], [b"PlayMusic"])
    data = load_source("bio", root)
    assert list(data) == ["train", "dev"]
    first, second = data["train"]
    assert first.text == "add sabrina salerno to my list"
    assert first.tli == "AddToPlaylist"
    assert first.wli == (WLIPair("artist", "sabrina salerno", 4, 19), WLIPair("playlist", "list", 26, 30))
    assert second.tli == "a#b"  # a multi-intent label stays one string
    assert second.wli == (WLIPair("thing", "it", 5, 7), WLIPair("time", "now", 8, 11))
    assert [r.id for r in data["train"]] == ["train-1", "train-2"]
    # a folder holding the three files directly is one "all" split
    assert list(load_source("bio", root / "valid")) == ["all"]


MMM_ITEMS = [
    {
        "input": "Marlon Brando starred in On the Waterfront/NER",
        "output": "Literature/NER/:Person;Marlon Brando:Product Name;On the Waterfront",
    },
    {"input": "The food was great/Sentiment Adj and N", "output": "Positive/Sentiment Adj and N/:Adj;great"},
    {"input": "a/b text/Custom Task", "output": "Other/Custom Task/:Thing;Star Wars: A New Hope"},
    {"input": "Nothing here/NER", "output": "News/NER/"},
]


@pytest.mark.parametrize("suffix", [".json", ".jsonl"])
def test_mmm(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"mmm{suffix}"
    (_json_list_file if suffix == ".json" else _jsonl)(path, MMM_ITEMS)
    recs = load_source("mmm", path)["all"]
    assert [r.text for r in recs] == [
        "Marlon Brando starred in On the Waterfront",
        "The food was great",
        "a/b text",
        "Nothing here",
    ]
    assert [r.tli for r in recs] == ["Literature", "Positive", "Other", "News"]
    assert recs[0].wli == (
        WLIPair("Person", "Marlon Brando", 0, 13),
        WLIPair("Product Name", "On the Waterfront", 25, 42),
    )
    assert recs[1].wli == (WLIPair("Adj", "great", 13, 18),)
    assert recs[2].wli == (WLIPair("Thing", "Star Wars: A New Hope", None, None),)  # ':' in entity; absent
    assert recs[3].wli == ()
    assert [r.id for r in recs] == ["mmm-1", "mmm-2", "mmm-3", "mmm-4"]


GIELLM_ITEMS = [
    {
        "input": "SPRiNGSと最も仲の良いライバルグループ。\n<社会><文芸><学問><技術><自然>\n固有表現抽出",
        "output": "<社会>固有表現抽出:その他の組織名;SPRiNGS",
    },
    {
        "input": "東京都に本社を置くレッドフォックス株式会社。\n‹社会›‹技術›\n固有表現抽出",
        "output": "‹技術›固有表現抽出:地名;東京都:法人名;レッドフォックス株式会社",
    },
    {"input": "雨が降った。\n<社会><自然>\n固有表現抽出", "output": "<自然›固有表現抽出"},
]


def test_giellm_both_bracket_styles(tmp_path: Path) -> None:
    recs = load_source("giellm", _jsonl(tmp_path / "g.jsonl", GIELLM_ITEMS))["all"]
    assert [r.text for r in recs] == [
        "SPRiNGSと最も仲の良いライバルグループ。",
        "東京都に本社を置くレッドフォックス株式会社。",
        "雨が降った。",
    ]
    assert [r.tli for r in recs] == ["社会", "技術", "自然"]
    assert recs[0].wli == (WLIPair("その他の組織名", "SPRiNGS", 0, 7),)
    assert recs[1].wli == (
        WLIPair("地名", "東京都", 0, 3),
        WLIPair("法人名", "レッドフォックス株式会社", 9, 21),
    )
    assert recs[2].wli == ()  # no pairs is fine
    assert load_source("giellm", _json_list_file(tmp_path / "g.json", GIELLM_ITEMS))["all"] == recs
    # Hugging Face `to_json` writes JSON lines into a .json file: sniffed, not trusted by suffix
    assert load_source("giellm", _jsonl(tmp_path / "hf" / "g.json", GIELLM_ITEMS))["all"] == recs


@pytest.mark.parametrize("header", [True, False])
def test_csv_pairs_with_and_without_header(tmp_path: Path, header: bool) -> None:
    import csv

    path = tmp_path / "SCNM_Dataset.csv"
    with path.open("w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        if header:
            w.writerow(["source", "target"])
        for item in GIELLM_ITEMS:
            w.writerow([item["input"], item["output"]])  # quoted multi-line source cells
    recs = load_source("csv_pairs", path)["all"]
    assert [r.tli for r in recs] == ["社会", "技術", "自然"]
    assert recs[0].text == "SPRiNGSと最も仲の良いライバルグループ。"
    assert recs[1].wli[1] == WLIPair("法人名", "レッドフォックス株式会社", 9, 21)
    first_line = 2 if header else 1
    assert [r.id for r in recs] == [f"SCNM_Dataset-{first_line + 3 * k}" for k in range(3)]  # 3 lines per row


def test_ids_are_stable_across_reads(tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "g.jsonl", GIELLM_ITEMS)
    assert [r.id for r in load_source("giellm", path)["all"]] == [
        r.id for r in load_source("giellm", path)["all"]
    ]


# ------------------------------------------------------------------------------------------ bad rows

GOOD = {"id": "a", "text": "Steve Jobs", "tli": "X", "wli": [{"type": "person", "span": "Steve Jobs"}]}


def _records_case(tmp_path: Path, bad_line: str | dict[str, object]) -> Path:
    """records.jsonl with the bad row on line 2 between two good rows."""
    lines = [json.dumps(GOOD), bad_line if isinstance(bad_line, str) else json.dumps(bad_line)]
    lines.append(json.dumps({**GOOD, "id": "c"}))
    return _write(tmp_path / "records.jsonl", "\n".join(lines) + "\n")


def _bio_case(tmp_path: Path, words: bytes, tags: bytes, label: bytes = b"Intent") -> Path:
    """A bio folder whose line 2 is (words, tags, label), between two good lines."""
    return _bio(
        tmp_path / "bio",
        [b"play jazz", words, b"play rock"],
        [b"O B-genre", tags, b"O B-genre"],
        [b"PlayMusic", label, b"PlayMusic"],
    )


def _ner_case(tmp_path: Path, span: list[int]) -> Path:
    good = {"curid": "1", "text": "東京都", "entities": [{"name": "東京都", "span": [0, 3], "type": "地名"}]}
    bad = {"curid": "2", "text": "大阪", "entities": [{"name": "大阪", "span": span, "type": "地名"}]}
    return _json_list_file(tmp_path / "ner.json", [good, bad, {**good, "curid": "3"}])


# (format, builder, file named in the message, bad line, problem text)
BAD_ROWS = {
    "broken JSON": (
        "records",
        lambda p: _records_case(p, '{"id": "b", "text": '),
        "records.jsonl",
        2,
        "broken JSON",
    ),
    "missing field": (
        "records",
        lambda p: _records_case(p, {"id": "b", "tli": "X"}),
        "records.jsonl",
        2,
        "missing field 'text'",
    ),
    "duplicate id": ("records", lambda p: _records_case(p, GOOD), "records.jsonl", 2, "duplicate id: 'a'"),
    "empty text label": (
        "records",
        lambda p: _records_case(p, {**GOOD, "id": "b", "tli": ""}),
        "records.jsonl",
        2,
        "empty text label",
    ),
    "empty WLI type": (
        "records",
        lambda p: _records_case(p, {**GOOD, "id": "b", "wli": [{"type": " ", "span": "Steve"}]}),
        "records.jsonl",
        2,
        "empty type for span 'Steve'",
    ),
    "span outside text (records)": (
        "records",
        lambda p: _records_case(
            p, {**GOOD, "id": "b", "wli": [{"type": "t", "span": "x", "start": 5, "end": 99}]}
        ),
        "records.jsonl",
        2,
        "lies outside the text",
    ),
    "span outside text (ner_json)": (
        "ner_json",
        lambda p: _ner_case(p, [1, 9]),
        "ner.json",
        3,
        "outside the text",
    ),
    "span not matching (ner_json)": ("ner_json", lambda p: _ner_case(p, [0, 1]), "ner.json", 3, "reads '大'"),
    "token/tag count mismatch": (
        "bio",
        lambda p: _bio_case(p, b"a b c d e f g", b"O O O O O O"),
        "bio",
        2,
        "token/tag count mismatch: 7 tokens, 6 tags",
    ),
    "empty text": ("bio", lambda p: _bio_case(p, b"  ", b""), "bio", 2, "empty text"),
    "undecodable bytes": (
        "bio",
        lambda p: _bio_case(p, b"play \xff\xfe", b"O O"),
        "bio",
        2,
        "undecodable bytes (not UTF-8) in seq.in",
    ),
    "unknown BIO tag": ("bio", lambda p: _bio_case(p, b"play it", b"O X-genre"), "bio", 2, "unknown BIO tag"),
    "wrong column count": (
        "csv_pairs",
        lambda p: _write(
            p / "pairs.csv", "テキスト,<社会>固有表現抽出\nonly one column\n東京,<社会>固有表現抽出\n"
        ),
        "pairs.csv",
        2,
        "wrong column count: expected 2 (source, target), found 1",
    ),
    "giellm label missing": (
        "giellm",
        lambda p: _jsonl(
            p / "g.jsonl", [GIELLM_ITEMS[0], {"input": "x", "output": "社会:地名;x"}, GIELLM_ITEMS[2]]
        ),
        "g.jsonl",
        2,
        "output does not start with a <label>",
    ),
    "mmm unknown task": (
        "mmm",
        lambda p: _jsonl(p / "m.jsonl", [MMM_ITEMS[0], {"input": "t/Foo", "output": "L/Bar/"}, MMM_ITEMS[3]]),
        "m.jsonl",
        2,
        "unknown task: 'Foo'",
    ),
}


@pytest.mark.parametrize("kind", list(BAD_ROWS))
def test_bad_row_error_policy_names_file_line_and_problem(tmp_path: Path, kind: str) -> None:
    fmt, build, name, line, problem = BAD_ROWS[kind]
    path = build(tmp_path)
    with pytest.raises(DataFormatError) as info:
        load_source(fmt, path, on_bad_row="error")
    msg = str(info.value)
    assert name in msg and f"line {line}:" in msg and problem in msg, msg


@pytest.mark.parametrize("kind", list(BAD_ROWS))
def test_bad_row_skip_policy_keeps_good_rows_and_logs(
    tmp_path: Path, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    fmt, build, name, _line, problem = BAD_ROWS[kind]
    path = build(tmp_path)
    with caplog.at_level(logging.WARNING):
        splits = load_source(fmt, path, on_bad_row="skip")
    assert len(splits["all"]) == 2
    log = caplog.text
    assert "skipped 1 bad rows" in log and name in log
    assert problem.split(":")[0] in log  # the reason (the problem up to its first ':')


# a WLI field the answer format `type:span;type:span` cannot hold: (pair, named field, skip reason)
UNSERIALIZABLE = {
    "pair separator in a span": (
        {"type": "person", "span": "Jobs;Wozniak"},
        "span 'Jobs;Wozniak' of pair 2 contains prompt.pair_sep ';'",
        "pair separator in a WLI span",
    ),
    "type/span separator in a type": (
        {"type": "org:company", "span": "Apple"},
        "type 'org:company' of pair 2 contains prompt.kv_sep ':'",
        "type/span separator in a WLI type",
    ),
    "line break in a span": (
        {"type": "person", "span": "Steve\nJobs"},
        "span 'Steve\\nJobs' of pair 2 contains a line break",
        "line break in a WLI span",
    ),
}


@pytest.mark.parametrize("kind", list(UNSERIALIZABLE))
def test_a_wli_field_the_answer_format_cannot_hold_is_a_bad_row(
    tmp_path: Path, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    pair, named, reason = UNSERIALIZABLE[kind]
    path = _records_case(tmp_path, {**GOOD, "id": "b", "wli": [GOOD["wli"][0], pair]})
    with pytest.raises(DataFormatError) as info:
        load_source("records", path, wli_format=WLIFormat())
    msg = str(info.value)
    assert f"records.jsonl, line 2: {reason}: {named}" in msg and "expected" in msg, msg
    with caplog.at_level(logging.WARNING):
        assert len(load_source("records", path, on_bad_row="skip", wli_format=WLIFormat())["all"]) == 2
    assert f"1 x {reason}" in caplog.text
    other = WLIFormat(pair_sep=" | ", kv_sep="=")  # another format holds ';' and ':'
    if "line break" not in kind:
        assert len(load_source("records", path, wli_format=other)["all"]) == 3


def test_a_span_with_the_type_span_separator_is_kept(tmp_path: Path) -> None:
    """Parsing splits a pair at its first ':' only, so a span may hold one (SNIPS: '09:44 am')."""
    path = _records_case(tmp_path, {**GOOD, "id": "b", "wli": [{"type": "timeRange", "span": "09:44 am"}]})
    (_, rec, _) = load_source("records", path, wli_format=WLIFormat())["all"]
    assert WLIFormat().parse(WLIFormat().serialize(rec.wli)) == [("timeRange", "09:44 am")]


def test_bio_line_count_mismatch_is_a_file_error_under_both_policies(tmp_path: Path) -> None:
    folder = _bio(tmp_path / "bio", [b"a b", b"c"], [b"O O", b"O"], [b"X"])
    for policy in ("error", "skip"):
        with pytest.raises(DataFormatError, match=r"seq\.in has 2, seq\.out has 2, label has 1"):
            load_source("bio", folder, on_bad_row=policy)


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ('{"curid": "1",\n "text": "x"}\n', "single JSON object"),
        ('[{"curid": "1", "text": "x", "entities": []},\n {"curid": ]\n', "broken JSON at line 2"),
        ("42\n", "expected a JSON list"),
    ],
)
def test_ner_json_not_a_list_or_broken_is_a_file_error(tmp_path: Path, content: str, expected: str) -> None:
    path = _write(tmp_path / "ner.json", content)
    with pytest.raises(DataFormatError, match=r"ner\.json") as info:
        load_source("ner_json", path, on_bad_row="skip")
    assert expected in str(info.value)


# ------------------------------------------------------------------------------------------ paths, formats


@pytest.mark.parametrize(
    ("fmt", "hint"),
    [
        ("records", "train.jsonl"),
        ("bio", "seq.in"),
        ("ner_json", "curid"),
        ("mmm", '"input": "<text>/<task>"'),
        ("giellm", "GIELLM"),
        ("csv_pairs", "SCNM_Dataset.csv"),
    ],
)
def test_missing_path_names_the_expected_file_and_format(tmp_path: Path, fmt: str, hint: str) -> None:
    with pytest.raises(FileNotFoundError) as info:
        load_source(fmt, tmp_path / "nowhere")
    msg = str(info.value)
    assert "nowhere" in msg and repr(fmt) in msg and hint in msg, msg


def test_empty_folder_and_missing_bio_file_say_what_is_expected(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"train\.jsonl"):
        load_source("records", tmp_path / "empty")
    folder = tmp_path / "bio"
    _write(folder / "seq.in", "a\n")
    _write(folder / "label", "X\n")
    with pytest.raises(FileNotFoundError, match=r"seq\.out not found: the 'bio' format expects"):
        load_source("bio", folder)


def test_unknown_format_lists_formats(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown data format 'conll'") as info:
        load_source("conll", tmp_path)
    assert all(f in str(info.value) for f in FORMATS)


def test_records_know_where_they_were_read(tmp_path: Path) -> None:
    recs = load_source("records", _records_case(tmp_path, {**GOOD, "id": "b"}))["all"]
    assert [r.where() for r in recs] == [f"{tmp_path / 'records.jsonl'}, line {i}" for i in (1, 2, 3)]
    assert "origin" not in recs[0].to_json() and Record.from_json(recs[0].to_json()) == recs[0]


def test_multi_intent_labels_can_be_order_insensitive(tmp_path: Path) -> None:
    folder = _bio(tmp_path / "bio", [b"a", b"b"], [b"O", b"O"], [b"flight#fare", b"fare#flight"])
    assert {r.tli for r in load_source("bio", folder)["all"]} == {"flight#fare", "fare#flight"}
    assert {r.tli for r in load_source("bio", folder, sort_multi_labels=True)["all"]} == {"fare#flight"}


def test_a_records_folder_without_split_files_says_what_it_holds(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(
        FileNotFoundError, match=r"folder without split files \(train.jsonl or train.json.*notes.txt"
    ):
        load_source("records", tmp_path)
