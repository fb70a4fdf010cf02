"""Prompt builder: token ranges, TLI codes, truncation, WLI serialization."""

from __future__ import annotations

import copy
import logging
import random
import string

import pytest

from mre.data.prompts import Fields, PromptBuilder, PromptError
from mre.data.record import Record, WLIPair
from mre.data.synthetic import generate
from mre.data.tokenizer import train_tiny_tokenizer
from mre.data.wli_format import WLIFormat
from mre.setting import Direction, Setting

FIELDS = {
    "en": Fields("Text:", "Label:", "Entities:", "Answer:"),
    "ja": Fields("文:", "ラベル:", "固有表現:", "答え:"),
}
INSTR = {"wli": "Extract the entities.", "tli": "Classify. Codes: {codes}."}


def corpus(records: list[Record], lang: str) -> list[str]:
    f = FIELDS[lang]
    fmt = WLIFormat()
    return [
        f"{f.text} {r.text}\n{f.tli} {r.tli}\n{f.wli} {fmt.serialize(r.wli)}\n{f.answer} {chr(65 + i % 26)}"
        for i, r in enumerate(records)
    ] + list(INSTR.values())


@pytest.fixture(scope="module", params=[(k, lang) for k in ("bpe", "llama") for lang in ("en", "ja")])
def setup(request, tmp_path_factory):
    kind, lang = request.param
    recs = generate(400, n_classes=4, language=lang, seed=1)
    tok = train_tiny_tokenizer(
        corpus(recs[:300], lang),
        kind=kind,
        vocab_size=800,
        cache_dir=tmp_path_factory.mktemp("tok"),
        extra_alphabet="".join(r.text for r in recs[300:]),
    )
    labels = sorted({r.tli for r in recs})
    return tok, recs, labels, lang


def builder(tok, labels, lang, direction, with_anchor, **kw) -> PromptBuilder:
    setting = Setting(Direction(direction), with_anchor)
    return PromptBuilder(tok, setting, INSTR[direction], FIELDS[lang], labels, **kw)


@pytest.mark.parametrize("direction", ["wli", "tli"])
@pytest.mark.parametrize("with_anchor", [True, False])
def test_ranges_decode_to_text_and_anchor(setup, direction, with_anchor):
    tok, recs, labels, lang = setup
    b = builder(tok, labels, lang, direction, with_anchor)
    for i, rec in enumerate(recs[300:340]):  # held-out texts: no unknown tokens either
        e = b.encode(rec, i)
        assert e is not None
        assert tok.decode(e.prompt_ids[slice(*e.text_range)]).strip() == rec.text
        assert tok.unk_token_id not in e.prompt_ids
        if with_anchor:
            assert tok.decode(e.prompt_ids[slice(*e.anchor_range)]).strip() == b.anchor_of(rec)
            assert e.text_range[1] <= e.anchor_range[0] < e.anchor_range[1] <= e.q
        else:
            assert e.anchor_range == (0, 0)
        assert e.text_range[1] <= e.q == len(e.prompt_ids) - 1
        assert tok.decode(e.answer_ids, skip_special_tokens=True).strip() == b.answer_of(rec)
        assert e.answer_ids[-1] == tok.eos_token_id
        full = tok(tok.decode(e.prompt_ids, skip_special_tokens=True))["input_ids"]
        assert full == e.prompt_ids, "the prompt must tokenize as the model will see it"


def test_tli_codes_are_single_distinct_tokens(setup):
    tok, recs, labels, lang = setup
    b = builder(tok, labels, lang, "tli", True)
    assert len(set(b.code_ids)) == len(labels)
    for rec in recs[:20]:
        e = b.encode(rec, 0)
        assert len(e.answer_ids) == 2  # code + EOS
        assert e.target == b.code_ids[labels.index(rec.tli)]
    # auto: the paper's class numbers where " 1" is one token (these tiny tokenizers split it: "▁"/"Ġ", "1")
    assert b.code_scheme in ("digits", "letters")
    assert f"{b.codes[0]}={labels[0]}" in b.render(recs[0]).prompt


def test_code_that_is_not_one_token_is_named(tmp_path):
    recs = generate(50, n_classes=3, seed=0)
    tok = train_tiny_tokenizer([r.text.lower() for r in recs], kind="bpe", vocab_size=300, cache_dir=tmp_path)
    labels = sorted({r.tli for r in recs})
    with pytest.raises(PromptError, match=r"one distinct token.*code 'A' of scheme 'letters'"):
        builder(tok, labels, "en", "tli", False, code_scheme="letters")
    with pytest.raises(PromptError, match=r"code '1' of scheme 'digits'.*'A' of scheme 'letters'"):
        builder(tok, labels, "en", "tli", False)  # auto: every scheme named


def test_too_many_labels_for_scheme(setup):
    tok, _, _, lang = setup
    labels = [f"l{i}" for i in range(12)]
    with pytest.raises(PromptError, match=r"'digits' has 9 codes .* 12 text labels.*letters"):
        builder(tok, labels, lang, "tli", False, code_scheme="digits")


def test_unseen_label_is_kept_and_wrong(setup):
    tok, recs, labels, lang = setup
    b = builder(tok, labels, lang, "tli", False)
    rec = Record("x", recs[0].text, "NeverSeen", recs[0].wli)
    assert b.answer_of(rec) == "?"
    assert b.encode(rec, 0) is not None


def test_truncation_shortens_text_never_anchor_or_answer(setup):
    tok, recs, labels, lang = setup
    b = builder(tok, labels, lang, "tli", True, max_length=10_000)
    long = Record("long", " ".join([recs[0].text] * 30), recs[0].tli, recs[0].wli)
    full = b.encode(long, 0)
    b.max_length = len(full.prompt_ids) + len(full.answer_ids) - 40
    e = b.encode(long, 0)
    assert e is not None and len(e.prompt_ids) + len(e.answer_ids) <= b.max_length
    assert b.truncated == 1
    assert tok.decode(e.prompt_ids[slice(*e.anchor_range)]).strip() == b.anchor_of(long)
    assert e.answer_ids == full.answer_ids
    assert long.text.startswith(tok.decode(e.prompt_ids[slice(*e.text_range)]).strip())
    b.max_length = e.anchor_range[1] - e.anchor_range[0]  # not even the anchor fits
    assert b.encode(long, 0) is None
    assert b.dropped["anchor/answer do not fit in max_length"] == 1


def _record_with_a_pair_in_the_tail(recs: list[Record]) -> tuple[Record, list[WLIPair]]:
    """A long text whose last sentence holds pairs (one without offsets) that a cut removes; returns
    it and the pairs of its head, which every cut here keeps."""
    head, tail = recs[0], next(r for r in recs[1:] if r.wli and r.tli != recs[0].tli)
    filler = " ".join([head.text] * 30)
    shift = len(filler) + 1
    moved = [WLIPair(p.type, p.span, p.start + shift, p.end + shift) for p in tail.wli]
    unlocated = WLIPair(tail.wli[0].type, tail.wli[0].span)  # no offsets: its span occurs in the tail only
    rec = Record("long", f"{filler} {tail.text}", head.tli, (*head.wli, *moved, unlocated))
    assert tail.wli[0].span not in filler
    return rec, list(head.wli)


@pytest.mark.parametrize("direction", ["wli", "tli"])
def test_truncation_drops_the_pairs_of_the_cut_text_from_answer_and_anchor(setup, direction, caplog):
    tok, recs, labels, lang = setup
    long, kept = _record_with_a_pair_in_the_tail(recs)
    b = builder(tok, labels, lang, direction, True, max_length=10_000)
    full = b.encode(long, 0)
    b.max_length = len(full.prompt_ids) + len(full.answer_ids) - 30
    with caplog.at_level(logging.INFO, logger="mre.data.prompts"):
        (e,) = b.encode_all([long], "test")
    fmt = WLIFormat()
    assert len(e.prompt_ids) + len(e.answer_ids) <= b.max_length
    if direction == "wli":  # the answer is the pairs inside the kept text
        assert e.answer == fmt.serialize(kept) == tok.decode(e.answer_ids, skip_special_tokens=True).strip()
    else:  # the anchor is
        assert tok.decode(e.prompt_ids[slice(*e.anchor_range)]).strip() == fmt.serialize(kept)
    assert long.text.startswith(e.record.text) and list(e.record.wli) == kept
    assert b.wli_cut == len(long.wli) - len(kept)
    assert f"dropped {b.wli_cut} WLI pairs" in caplog.text and "shortened 1 of 1 test texts" in caplog.text


def test_no_tli_source_refuses_wli_with_anchor(setup):
    tok, recs, labels, lang = setup
    b = builder(tok, labels, lang, "wli", True)
    with pytest.raises(PromptError, match="only direction=wli with_anchor=false"):
        b.encode(Record("n", recs[0].text, None, recs[0].wli), 0)


def _random_pairs(rng: random.Random) -> list[WLIPair]:
    alphabet = string.ascii_letters + "ぁあいう東京 -_.'"
    word = lambda: "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 8))).strip() or "x"  # noqa: E731
    return [WLIPair(word().replace(" ", ""), word()) for _ in range(rng.randint(0, 4))]


def test_serializer_parser_round_trip():
    fmt = WLIFormat()
    rng = random.Random(0)
    for _ in range(500):
        pairs = _random_pairs(rng)
        assert fmt.problem(pairs) is None
        assert fmt.parse(fmt.serialize(pairs)) == [(p.type, p.span) for p in pairs]
    other = WLIFormat(pair_sep=" | ", kv_sep="=", empty="-")
    pairs = [WLIPair("person", "Steve Jobs"), WLIPair("company", "Apple: Inc")]
    assert other.parse(other.serialize(pairs)) == [("person", "Steve Jobs"), ("company", "Apple: Inc")]


def test_parser_never_raises_on_malformed_output():
    fmt = WLIFormat()
    rng = random.Random(1)
    for _ in range(2000):
        s = "".join(rng.choice(":;ab \n") for _ in range(rng.randint(0, 30)))
        out = fmt.parse(s)
        assert all(t and sp for t, sp in out)
    assert fmt.parse("person:Steve Jobs;garbage;:x;company:") == [("person", "Steve Jobs")]
    assert fmt.parse("none") == [] and fmt.parse("") == []


# ---------- chat templates ----------
# Two template families written for these tests: ChatML (SmolLM2, Qwen) and LLaMA-2-chat's [INST] form.
CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
INST = (
    "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}"
    "[INST] {{ m['content'] | trim }} [/INST]"
    "{% else %} {{ m['content'] | trim }} {{ eos_token }}{% endif %}{% endfor %}"
)
TEMPLATES = {"chatml": CHATML, "inst": INST}


def chat_tokenizer(setup, family: str):
    tok = copy.deepcopy(setup[0])
    if family == "chatml":
        tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tok.chat_template = TEMPLATES[family]
    return tok


def chat_builder(tok, labels, lang, direction, with_anchor, **kw) -> PromptBuilder:
    return builder(tok, labels, lang, direction, with_anchor, chat=True, **kw)


@pytest.mark.parametrize("family", sorted(TEMPLATES))
@pytest.mark.parametrize("direction", ["wli", "tli"])
@pytest.mark.parametrize("with_anchor", [True, False])
def test_chat_template_ranges_q_and_answer(setup, family, direction, with_anchor):
    _, recs, labels, lang = setup
    tok = chat_tokenizer(setup, family)
    b = chat_builder(tok, labels, lang, direction, with_anchor)
    eot = tok.convert_tokens_to_ids("<|im_end|>") if family == "chatml" else tok.eos_token_id
    assert b.end_of_turn == eot and b.stop_ids[0] == eot
    for i, rec in enumerate(recs[300:330]):
        e = b.encode(rec, i)
        assert tok.decode(e.prompt_ids[slice(*e.text_range)]).strip() == rec.text
        if with_anchor:
            assert tok.decode(e.prompt_ids[slice(*e.anchor_range)]).strip() == b.anchor_of(rec)
        # the prompt is exactly the template's generation prompt: q is its last token
        user = b.render(rec).prompt
        turn = tok.apply_chat_template(
            [{"role": "user", "content": user[user.index(INSTR[direction][:10]) :].split("<|im_end|>")[0]
              .split(" [/INST]")[0]}], add_generation_prompt=True, tokenize=False,
        )  # fmt: skip
        assert e.prompt_ids == tok(turn, add_special_tokens=False)["input_ids"]
        # the loss covers the answer and the end of turn only (not the newline ChatML puts after it)
        assert e.answer_ids[-1] == eot and eot not in e.answer_ids[:-1]
        assert tok.decode(e.answer_ids[:-1]).strip() == b.answer_of(rec)
    if direction == "tli" and family == "chatml":
        assert b.code_scheme == "digits" and b.codes[:2] == ["1", "2"]  # one token right after "assistant\n"


@pytest.mark.parametrize("family", sorted(TEMPLATES))
def test_chat_template_truncation_keeps_anchor_and_answer(setup, family):
    _, recs, labels, lang = setup
    tok = chat_tokenizer(setup, family)
    b = chat_builder(tok, labels, lang, "tli", True, max_length=10_000)
    long = Record("long", " ".join([recs[0].text] * 30), recs[0].tli, recs[0].wli)
    full = b.encode(long, 0)
    b.max_length = len(full.prompt_ids) + len(full.answer_ids) - 40
    e = b.encode(long, 0)
    assert len(e.prompt_ids) + len(e.answer_ids) <= b.max_length and e.answer_ids == full.answer_ids
    assert tok.decode(e.prompt_ids[slice(*e.anchor_range)]).strip() == b.anchor_of(long)


def test_chat_template_refusals(setup):
    tok, _, labels, lang = setup
    with pytest.raises(PromptError, match=r"chat_template=on, but .* has no chat template"):
        chat_builder(tok, labels, lang, "tli", True)
    moved = copy.deepcopy(tok)
    moved.chat_template = "{% for m in messages %}{{ m['content'] | upper }}\n{% endfor %}"
    with pytest.raises(PromptError, match=r"does not keep the user text .*prompt.chat_template=off"):
        chat_builder(moved, labels, lang, "tli", True)
    no_end = copy.deepcopy(tok)
    no_end.chat_template = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    with pytest.raises(PromptError, match=r"no special token .*prompt.chat_template=off"):
        chat_builder(no_end, labels, lang, "wli", True)


@pytest.mark.parametrize("name", ["pair_sep", "kv_sep", "empty"])
def test_a_separator_with_a_line_break_is_refused(name):
    """Answers are one line (generation stops at the first newline)."""
    with pytest.raises(ValueError, match=rf"prompt.{name}=.*without a line break"):
        WLIFormat(**{name: "\n"})
