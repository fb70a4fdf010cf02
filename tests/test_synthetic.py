"""The embedded synthetic data set: determinism, shape, offsets, balance, validation, planted effects."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

import pytest

from mre.data.record import check_record
from mre.data.synthetic import ambiguous_words, class_names, entity_types, generate

ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- count-based estimators (no training)


def _nb_fit(rows):
    """Multinomial naive Bayes counts from (features, label) rows."""
    prior: Counter = Counter()
    feat: dict[str, Counter] = defaultdict(Counter)
    vocab: set = set()
    for xs, y in rows:
        prior[y] += 1
        feat[y].update(xs)
        vocab.update(xs)
    return prior, feat, len(vocab) + 1


def _nb_predict(model, xs):
    prior, feat, v = model

    def score(y):
        tot = sum(feat[y].values())
        return math.log(prior[y]) + sum(math.log((feat[y][x] + 1) / (tot + v)) for x in xs)

    return max(sorted(prior), key=score)


def tli_from_types_acc(train, test) -> float:
    """Predict tli from the multiset of WLI types: majority class of that exact multiset, NB fallback."""
    table: dict[tuple, Counter] = defaultdict(Counter)
    for r in train:
        table[tuple(sorted(p.type for p in r.wli))][r.tli] += 1
    nb = _nb_fit([([p.type for p in r.wli], r.tli) for r in train])
    hits = 0
    for r in test:
        key = tuple(sorted(p.type for p in r.wli))
        if key in table:
            pred = max(sorted(table[key]), key=lambda y, key=key: table[key][y])
        else:
            pred = _nb_predict(nb, list(key))
        hits += pred == r.tli
    return hits / len(test)


def _words(text: str) -> list[str]:
    return re.findall(r"\w+", text.lower())


def tli_from_text_acc(train, test) -> float:
    """Predict tli from the text's bag of words (en) with naive Bayes: what reading the text gives."""
    nb = _nb_fit([(_words(r.text), r.tli) for r in train])
    return sum(_nb_predict(nb, _words(r.text)) == r.tli for r in test) / len(test)


def ambiguous_type_acc(train, test, language="en") -> tuple[float, float]:
    """Accuracy of the majority type of class-ambiguous spans given (span) and given (span, tli)."""
    amb = ambiguous_words(language)
    by_span: dict[str, Counter] = defaultdict(Counter)
    by_span_tli: dict[tuple, Counter] = defaultdict(Counter)
    for r in train:
        for p in r.wli:
            if p.span in amb:
                by_span[p.span][p.type] += 1
                by_span_tli[p.span, r.tli][p.type] += 1

    def majority(c: Counter) -> str | None:
        return max(sorted(c), key=lambda t: c[t]) if c else None

    n = hit_span = hit_both = 0
    for r in test:
        for p in r.wli:
            if p.span in amb:
                n += 1
                hit_span += majority(by_span[p.span]) == p.type
                hit_both += majority(by_span_tli[p.span, r.tli]) == p.type
    return hit_span / n, hit_both / n


def measure(n_classes=4, wli_helps_tli=0.8, tli_helps_wli=0.8, n_train=4000, n_test=2000, language="en"):
    """All the planted-effect estimators on held-out generated data (different seeds)."""
    kw = dict(
        n_classes=n_classes, language=language, wli_helps_tli=wli_helps_tli, tli_helps_wli=tli_helps_wli
    )
    train = generate(n_train, seed=1, **kw)
    test = generate(n_test, seed=2, **kw)
    span_acc, span_tli_acc = ambiguous_type_acc(train, test, language)
    out = {"tli_from_types": tli_from_types_acc(train, test), "type_from_span": span_acc}
    out["type_from_span_tli"] = span_tli_acc
    if language == "en":
        out["tli_from_text"] = tli_from_text_acc(train, test)
    return out


# ---------------------------------------------------------------- determinism, shape, offsets


@pytest.mark.parametrize("language", ["en", "ja"])
def test_same_arguments_give_identical_records_and_seed_changes_them(language):
    a = generate(200, language=language, seed=7)
    assert a == generate(200, language=language, seed=7)
    b = generate(200, language=language, seed=8)
    assert a != b
    assert sum(x.text != y.text for x, y in zip(a, b, strict=True)) > 150


def test_identical_across_processes_with_different_hash_seeds():
    code = (
        "import json; from mre.data.synthetic import generate; "
        "print(json.dumps([r.to_json() for r in generate(50, n_classes=6, language='ja', seed=3)]))"
    )
    outs = []
    for hash_seed in ("1", "987"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        proc = subprocess.run(
            [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True
        )
        outs.append(json.loads(proc.stdout))
    here = [r.to_json() for r in generate(50, n_classes=6, language="ja", seed=3)]
    assert outs[0] == outs[1] == here


@pytest.mark.parametrize("language", ["en", "ja"])
@pytest.mark.parametrize("n_classes", [2, 5, 8])
def test_records_have_the_promised_shape(language, n_classes):
    recs = generate(300, n_classes=n_classes, language=language, id_prefix="x")
    assert len(recs) == 300
    assert len({r.id for r in recs}) == 300 and all(r.id.startswith("x-") for r in recs)
    names, types = set(class_names(language, n_classes)), set(entity_types(language))
    assert {r.tli for r in recs} == names
    assert {len(r.wli) for r in recs} == {1, 2, 3}
    for r in recs:
        assert all(p.type in types for p in r.wli)
        assert len({p.span for p in r.wli}) == len(r.wli), r
    assert generate(0) == []


@pytest.mark.parametrize("language", ["en", "ja"])
def test_offsets_are_exact_and_in_text_order(language):
    for r in generate(500, n_classes=8, language=language, seed=11):
        assert check_record(r) is None, r
        for p in r.wli:
            assert r.text[p.start : p.end] == p.span
        starts = [p.start for p in r.wli]
        assert starts == sorted(starts)


def test_english_texts_are_short_sentences_with_several_templates():
    recs = generate(1000, seed=5)
    lengths = [len(r.text.split()) for r in recs]
    assert min(lengths) >= 5 and max(lengths) <= 20
    openers = Counter()
    for r in recs:
        spans = {p.span for p in r.wli}
        openers[next(w for w in re.findall(r"\w+", r.text) if w not in spans and w != "and")] += 1
    assert len(openers) == 7 and min(openers.values()) > 80


def test_japanese_texts_have_no_spaces_or_latin_letters():
    for r in generate(500, language="ja", n_classes=8, seed=4):
        assert r.text.endswith("。")
        assert not re.search(r"[\sA-Za-z0-9{}]", r.text), r.text
        assert 10 <= len(r.text) <= 60
        assert all(re.fullmatch(r"[\u30a0-\u30ff]+", p.span) for p in r.wli)
    assert class_names("ja", 3) == ["スポーツ", "音楽", "旅行"]
    assert "人名" in entity_types("ja") and "地名" in entity_types("ja")


@pytest.mark.parametrize("n_classes", [2, 3, 4, 7, 8])
def test_classes_are_balanced(n_classes):
    counts = Counter(r.tli for r in generate(1003, n_classes=n_classes, seed=9))
    assert len(counts) == n_classes
    assert max(counts.values()) - min(counts.values()) <= 1
    names = class_names("en", n_classes)
    idx = [names.index(r.tli) for r in generate(200, n_classes=n_classes, seed=9)]
    assert idx != sorted(idx) and idx != [i % n_classes for i in range(200)]  # shuffled, not laid out


# ---------------------------------------------------------------- argument validation


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"language": "fr"}, r"language must be one of \['en', 'ja'\], got 'fr'"),
        ({"n_classes": 1}, r"n_classes must be between 2 and 8, got 1"),
        ({"n_classes": 9}, r"n_classes must be between 2 and 8, got 9"),
        ({"wli_helps_tli": 1.5}, r"wli_helps_tli must be in \[0, 1\], got 1.5"),
        ({"tli_helps_wli": -0.1}, r"tli_helps_wli must be in \[0, 1\], got -0.1"),
        ({"n": -1}, r"n must be >= 0, got -1"),
    ],
)
def test_bad_arguments_are_rejected_with_a_clear_message(kwargs, message):
    kwargs = {"n": 10, **kwargs}
    with pytest.raises(ValueError, match=message):
        generate(**kwargs)


def test_helpers_validate_too():
    with pytest.raises(ValueError, match="language must be one of"):
        entity_types("de")
    with pytest.raises(ValueError, match="between 2 and 8"):
        class_names("en", 0)
    assert class_names("en", 4) == ["Sports", "Music", "Travel", "Technology"]
    assert len(entity_types("en")) == 8 and len(ambiguous_words("ja")) == 16


# ---------------------------------------------------------------- planted effects


def test_wli_types_predict_tli_only_when_the_knob_is_on():
    on = measure(wli_helps_tli=0.9, tli_helps_wli=0.9)
    off = measure(wli_helps_tli=0.0, tli_helps_wli=0.9)
    assert on["tli_from_types"] > 0.8
    # reading the words gives much less than knowing the types
    assert on["tli_from_text"] < on["tli_from_types"] - 0.15
    # at 0 the type multiset is at chance, even with the other knob fully on
    assert off["tli_from_types"] < 1 / 4 + 0.06


def test_wli_effect_scales_with_the_knob_and_holds_for_more_classes():
    accs = [
        measure(n_classes=8, wli_helps_tli=s, n_train=3000, n_test=1000)["tli_from_types"] for s in (0.3, 0.9)
    ]
    assert accs[0] + 0.3 < accs[1]
    assert accs[1] > 0.75  # chance is 0.125; pool-B types add class-free noise to the multiset


def test_tli_decides_ambiguous_types_only_when_the_knob_is_on():
    on = measure(wli_helps_tli=0.0, tli_helps_wli=0.9)
    off = measure(wli_helps_tli=0.9, tli_helps_wli=0.0)
    assert on["type_from_span_tli"] > on["type_from_span"] + 0.3
    assert on["type_from_span_tli"] > 0.9
    # at 0 the class adds nothing for the ambiguous spans, even with the other knob fully on
    assert off["type_from_span_tli"] < off["type_from_span"] + 0.03
    assert off["type_from_span"] < 0.6


def test_planted_effects_hold_in_japanese():
    on = measure(wli_helps_tli=0.9, tli_helps_wli=0.9, language="ja", n_train=3000, n_test=1000)
    assert on["tli_from_types"] > 0.8
    assert on["type_from_span_tli"] > on["type_from_span"] + 0.3
