"""Few-shot T5 prompt classifier: verbalizer extraction and file, the scoring math, the first
decoder step, and end-to-end runs (in-process and the `-m` CLI sweep), all with real tiny models."""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import subprocess
import sys

import pytest
import torch
from omegaconf import OmegaConf
from omegaconf.errors import ValidationError

from mre.config import compose
from mre.data.dataset import load_splits
from mre.data.record import Record, WLIPair
from mre.data.tokenizer import train_tiny_tokenizer
from mre.models import build_model
from mre.runner import run
from mre.tasks.fewshot.data import (
    Collate,
    Example,
    FewShotContext,
    PromptTemplate,
    TemplateError,
    class_labels,
    fewshot_sample,
)
from mre.tasks.fewshot.module import PromptClassifier, first_step_logits
from mre.tasks.fewshot.task import build_verbalizer
from mre.tasks.fewshot.verbalizer import (
    Verbalizer,
    VerbalizerError,
    VerbalizerHead,
    knowledgeable_verbalizer,
    label_word,
    manual_verbalizer,
    read_verbalizer,
    tokenize_verbalizer,
    word_pieces,
    write_verbalizer,
)
from tests.conftest import REPO, shared_data

FEWSHOT = ["experiment=kv_fewshot"]


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models on a shared 2-core machine run faster on one thread than on two contended ones."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def rec(i: int, label: str | None, *spans: str) -> Record:
    return Record(f"r{i}", "some text " + " ".join(spans), label, tuple(WLIPair("t", s) for s in spans))


RECORDS = [
    rec(0, "Fruit", "red apple", "pear"),
    rec(1, "Fruit", "Apple", "pear", "kiwi"),
    rec(2, "Car", "car", "apple"),
    rec(3, "Car", "Car", "bus"),
    rec(4, None, "car", "car"),  # no text label: ignored
]
LABELS = ["Car", "Fruit", "SearchCreativeWork"]


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    corpus = ["red apple pear kiwi car bus train this text is about"] * 30 + [
        "the car and the bus and a pear and an apple. This text is about <extra_id_0> ."
    ]
    return train_tiny_tokenizer(
        corpus, kind="llama", vocab_size=200, cache_dir=tmp_path_factory.mktemp("tok"), seq2seq=True
    )


@pytest.fixture(scope="module")
def t5(tok):
    return build_model(compose(["model=tiny_t5"]).model, tok, seed=0).eval()


# ---------- verbalizer extraction ----------
def test_label_word_forms():
    assert label_word("PlayMusic") == "play music"
    assert label_word("SearchCreativeWork") == "search creative work"
    assert label_word("get_weather") == "get weather"
    assert label_word("Sports") == "sports" and label_word("スポーツ") == "スポーツ"
    assert label_word("PlayMusic", "raw") == "PlayMusic"


def test_knowledgeable_top_k_by_count_then_alphabet(caplog):
    with caplog.at_level(logging.WARNING):
        v = knowledgeable_verbalizer(RECORDS, LABELS, top_k=3)
    assert v.of("Fruit") == ("apple", "pear", "kiwi")  # apple 2, pear 2, kiwi 1, red 1
    assert v.of("Car") == ("car", "apple", "bus")  # car 2, then the ties alphabetically
    # a class without WLI words falls back to its label name and says so
    assert v.of("SearchCreativeWork") == ("search creative work",)
    assert "'SearchCreativeWork' has no WLI words" in caplog.text and "falling back" in caplog.text
    assert knowledgeable_verbalizer(RECORDS, LABELS, top_k=100).of("Fruit") == (
        "apple",
        "pear",
        "kiwi",
        "red",
    )


def test_knowledgeable_min_count_drop_shared_and_span_unit():
    assert knowledgeable_verbalizer(RECORDS, LABELS, min_count=2).of("Fruit") == ("apple", "pear")
    assert knowledgeable_verbalizer(RECORDS, LABELS, min_count=2).of("Car") == ("car",)
    shared = knowledgeable_verbalizer(RECORDS, LABELS, drop_shared=True)  # apple is in both classes
    assert shared.of("Fruit") == ("pear", "kiwi", "red") and shared.of("Car") == ("car", "bus")
    # with min_count=2 apple passes only in Fruit, so it is not shared
    assert knowledgeable_verbalizer(RECORDS, LABELS, min_count=2, drop_shared=True).of("Fruit") == (
        "apple",
        "pear",
    )
    spans = knowledgeable_verbalizer(RECORDS, LABELS, unit="span")
    assert spans.of("Fruit") == ("pear", "apple", "kiwi", "red apple")


def test_knowledgeable_max_pieces(tok):
    records = [*RECORDS, rec(5, "Fruit", "zqxvwj"), rec(6, "Fruit", "zqxvwj")]
    assert len(word_pieces(tok, "zqxvwj")) > 1 and len(word_pieces(tok, "apple")) == 1
    full = knowledgeable_verbalizer(records, LABELS)
    assert full.of("Fruit")[0] == "apple" and "zqxvwj" in full.of("Fruit")
    limited = knowledgeable_verbalizer(records, LABELS, max_pieces=1, tokenizer=tok)
    kept = limited.of("Fruit")
    assert "zqxvwj" not in kept and kept
    assert all(len(word_pieces(tok, w)) <= 1 for w in kept)


def test_source_train_or_fewshot():
    vcfg = compose(["verbalizer=knowledgeable"]).verbalizer
    sample = RECORDS[:2]
    assert build_verbalizer(vcfg, LABELS, sample, RECORDS).of("Car") == ("car", "apple", "bus")
    vcfg.source = "fewshot"
    assert build_verbalizer(vcfg, LABELS, sample, RECORDS).of("Car") == ("car",)  # label-name fallback
    with pytest.raises(ValidationError, match="train, fewshot"):  # the schema refuses it on assignment
        vcfg.source = "everything"


def test_manual_verbalizer():
    v = manual_verbalizer(LABELS)
    assert v.words == (("car",), ("fruit",), ("search creative work",))
    v = manual_verbalizer(LABELS, {"Car": ["car", "bus"]})
    assert v.of("Car") == ("car", "bus") and v.of("Fruit") == ("fruit",)
    with pytest.raises(VerbalizerError, match="Boat"):
        manual_verbalizer(LABELS, {"Boat": ["ship"]})


def test_word_that_tokenizes_to_nothing_is_dropped(tok, caplog):
    v = Verbalizer(("Car", "Fruit"), (("car", " ", ""), ("",)))
    with caplog.at_level(logging.WARNING):
        used, pieces = tokenize_verbalizer(v, tok)
    assert used.of("Car") == ("car",) and used.of("Fruit") == ("fruit",)  # Fruit: label-name fallback
    assert "tokenizes to nothing" in caplog.text and "falling back to its label name 'fruit'" in caplog.text
    assert pieces[0] == [word_pieces(tok, "car")] and all(p for cls in pieces for p in cls)


# ---------- the file ----------
def test_verbalizer_file_round_trip(tmp_path):
    v = knowledgeable_verbalizer(RECORDS, LABELS)
    path = write_verbalizer(v, tmp_path / "verbalizer.txt", header="made by a test")
    text = path.read_text()
    assert text.startswith("# made by a test") and "Fruit: apple, pear, kiwi, red\n" in text
    assert read_verbalizer(path, LABELS) == v
    # the data set's label order wins over the file's; users may edit freely
    path.write_text("# edited\nFruit: fig , plum\n\nSearchCreativeWork: film\nCar: van\n")
    assert read_verbalizer(path, LABELS).words == (("van",), ("fig", "plum"), ("film",))


def test_verbalizer_file_errors_name_file_and_class(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("# only a comment\n\n")
    with pytest.raises(VerbalizerError, match="empty") as e:
        read_verbalizer(empty, LABELS)
    assert str(empty) in str(e.value)
    missing = tmp_path / "missing.txt"
    missing.write_text("Car: car\nFruit: apple\n")
    with pytest.raises(VerbalizerError, match="'SearchCreativeWork' is missing") as e:
        read_verbalizer(missing, LABELS)
    assert str(missing) in str(e.value)
    for body, what in [
        ("Car: car\nFruit:\nSearchCreativeWork: x\n", "'Fruit' has no words"),
        ("Car: car\nBoat: ship\n", "'Boat' is not a label"),
        ("Car: car\nCar: van\n", "'Car' appears twice"),
        ("car, van\n", "line 1"),
    ]:
        bad = tmp_path / "bad.txt"
        bad.write_text(body)
        with pytest.raises(VerbalizerError, match=what) as e:
            read_verbalizer(bad, LABELS)
        assert str(bad) in str(e.value)
    with pytest.raises(VerbalizerError, match="does not exist"):
        read_verbalizer(tmp_path / "nope.txt", LABELS)


# ---------- the scoring math ----------
LOGITS = torch.tensor([[0.5, 2.0, -1.0, 0.0, 1.5, -0.5], [1.0, -2.0, 0.3, 2.5, 0.0, 0.7]])
# class 0: words [1] and [2, 3]; class 1: words [4], [5, 0] and [3]
PIECES = [[[1], [2, 3]], [[4], [5, 0], [3]]]


def _word_logits(row: list[float], how: str) -> list[float]:
    reduce = {"first": lambda v: v[0], "mean": lambda v: sum(v) / len(v), "max": max}[how]
    return [reduce([row[i] for i in w]) for cls in PIECES for w in cls]


def _softmax(xs: list[float]) -> list[float]:
    e = [math.exp(x) for x in xs]
    return [x / sum(e) for x in e]


@pytest.mark.parametrize("how", ["first", "mean", "max"])
def test_multi_token_reductions(how):
    head = VerbalizerHead(PIECES, multi_token=how)
    for b, row in enumerate(LOGITS.tolist()):
        assert head.word_logits(LOGITS)[b].tolist() == pytest.approx(_word_logits(row, how))


@pytest.mark.parametrize("how", ["first", "mean", "max"])
def test_mean_logprob_after_one_softmax_over_all_label_words(how):
    head = VerbalizerHead(PIECES, multi_token=how, aggregate="mean_logprob")
    for b, row in enumerate(LOGITS.tolist()):
        p = _softmax(_word_logits(row, how))  # one softmax over all 5 label words
        want = [(math.log(p[0]) + math.log(p[1])) / 2, (math.log(p[2]) + math.log(p[3]) + math.log(p[4])) / 3]
        assert head(LOGITS)[b].tolist() == pytest.approx(want, rel=1e-5)


def test_sum_of_probabilities():
    head = VerbalizerHead(PIECES, multi_token="mean", aggregate="sum_prob")
    for b, row in enumerate(LOGITS.tolist()):
        p = _softmax(_word_logits(row, "mean"))
        want = [math.log(p[0] + p[1]), math.log(p[2] + p[3] + p[4])]
        assert head(LOGITS)[b].tolist() == pytest.approx(want, rel=1e-5)
    assert head(LOGITS).exp().sum(-1).tolist() == pytest.approx([1.0, 1.0])


@pytest.mark.parametrize("aggregate", ["mean_logprob", "sum_prob"])
def test_contextual_calibration_divides_by_mean_probability(aggregate):
    """p_w <- (p_w / c_w) / sum_v (p_v / c_v), c_w = mean of p_w over the calibration texts."""
    head = VerbalizerHead(PIECES, multi_token="first", aggregate=aggregate, calibrate=True)
    c = torch.tensor([0.1, 0.2, 0.3, 0.25, 0.15])
    head.set_calibration(c)
    for b, row in enumerate(LOGITS.tolist()):
        p = _softmax(_word_logits(row, "first"))
        q = [pi / ci for pi, ci in zip(p, c.tolist(), strict=True)]
        q = [x / sum(q) for x in q]
        if aggregate == "mean_logprob":
            want = [(math.log(q[0]) + math.log(q[1])) / 2, sum(math.log(x) for x in q[2:]) / 3]
        else:
            want = [math.log(q[0] + q[1]), math.log(sum(q[2:]))]
        assert head(LOGITS)[b].tolist() == pytest.approx(want, rel=1e-5)
    off = VerbalizerHead(PIECES, multi_token="first", aggregate=aggregate)
    off.set_calibration(c)  # ignored when calibration is off
    assert torch.allclose(
        off(LOGITS), VerbalizerHead(PIECES, multi_token="first", aggregate=aggregate)(LOGITS)
    )


def test_learnable_word_weights():
    head = VerbalizerHead(PIECES, multi_token="first", learn_weights=True)
    plain = VerbalizerHead(PIECES, multi_token="first")
    assert torch.allclose(head(LOGITS), plain(LOGITS))  # zero weights = the plain mean
    with torch.no_grad():
        head.weights.copy_(torch.tensor([[1.0, 0.0, 9.0], [0.5, -0.5, 2.0]]))  # [0, 2]: padding
    row = LOGITS[0].tolist()
    p = _softmax(_word_logits(row, "first"))
    a0, a1 = _softmax([1.0, 0.0]), _softmax([0.5, -0.5, 2.0])
    want = [
        a0[0] * math.log(p[0]) + a0[1] * math.log(p[1]),
        sum(a * math.log(x) for a, x in zip(a1, p[2:], strict=True)),
    ]
    assert head(LOGITS)[0].tolist() == pytest.approx(want, rel=1e-5)
    head(LOGITS).sum().backward()
    assert head.weights.grad is not None and head.weights.grad[0, 2] == 0


def test_bad_option_lists_choices():
    with pytest.raises(VerbalizerError, match="first, mean, max"):
        VerbalizerHead(PIECES, multi_token="last")
    with pytest.raises(VerbalizerError, match="mean_logprob, sum_prob"):
        VerbalizerHead(PIECES, aggregate="vote")


# ---------- template, sample, model ----------
def test_template_and_sample(tok):
    with pytest.raises(TemplateError, match=r"\{mask\}"):
        PromptTemplate("{text} is about")
    t = PromptTemplate("{text} This text is about {mask} .")
    assert t.render("a car") == "a car This text is about <extra_id_0> ."
    ids = t.encode(tok, "the car " * 50, max_length=20)
    assert len(ids) <= 20 and t.mask_id(tok) in ids and ids[-1] == tok.eos_token_id
    records = [rec(i, ["A", "B", "C"][i % 3], "x") for i in range(30)]
    assert len(fewshot_sample(records, n_total=10, seed=1)) == 10
    assert fewshot_sample(records, 10, seed=1) == fewshot_sample(records, 10, seed=1)
    k = fewshot_sample(records, n_total=10, k_per_class=2, seed=1)
    assert sorted(r.tli for r in k) == ["A", "A", "B", "B", "C", "C"]
    with pytest.raises(ValueError, match="text labels"):
        class_labels([rec(0, None, "x")])


def _module(tok, t5, verbalizer, **kw):
    used, pieces = tokenize_verbalizer(verbalizer, tok)
    cfg = compose(["model=tiny_t5"])
    template = PromptTemplate("{text} {mask}")
    context = FewShotContext(list(used.labels), {"train": [], "dev": [], "test": []}, tok, template)
    return PromptClassifier(
        cfg.model,
        cfg.optim,
        context,
        used,
        pieces,
        mask_id=template.mask_id(tok),
        model=t5,
        **kw,
    )


@pytest.mark.parametrize("sentinel_first", [False, True])
def test_label_word_scores_come_from_the_first_decoder_step(tok, t5, sentinel_first):
    module = _module(
        tok, t5, manual_verbalizer(["Car", "Fruit"], {"Car": ["car", "bus"]}), sentinel_first=sentinel_first
    )
    module.configure_model()
    template = PromptTemplate("{text} This text is about {mask} .")
    texts = ["a red car and a bus", "an apple"]
    batch = [template.encode(tok, t, max_length=64) for t in texts]
    width = max(map(len, batch))
    ids = torch.tensor([b + [tok.pad_token_id] * (width - len(b)) for b in batch])
    mask = (torch.arange(width)[None] < torch.tensor([len(b) for b in batch])[:, None]).long()
    start = t5.config.decoder_start_token_id
    assert start == tok.pad_token_id
    prefix = [[start, module.mask_id]] if sentinel_first else [[start]]
    with torch.no_grad():
        got = module.vocab_logits(ids, mask)
        for b, one in enumerate(batch):  # each sample alone, unpadded: the manual forward
            manual = t5(input_ids=torch.tensor([one]), decoder_input_ids=torch.tensor(prefix)).logits[0, -1]
            assert torch.allclose(got[b], manual, atol=1e-5)
        assert not torch.allclose(got[0], got[1])  # the scores depend on the input
        assert torch.allclose(module(ids, mask), module.head(got))
        assert torch.allclose(first_step_logits(t5, ids, mask, torch.tensor(prefix)), got)


def test_calibration_uses_mean_probabilities_on_unlabeled_texts(tok, t5):
    template = PromptTemplate("{text} This text is about {mask} .")
    texts = ["a red car", "an apple and a pear", "the bus", "kiwi"]
    calib = [template.encode(tok, t, max_length=64) for t in texts]
    module = _module(
        tok,
        t5,
        manual_verbalizer(["Car", "Fruit"], {"Fruit": ["apple", "pear"]}),
        calibrate=True,
        calibration_ids=calib,
        eval_batch_size=3,
    )
    module.configure_model()
    mean = module.calibrate()
    with torch.no_grad():
        one = [
            module.head.word_probs(
                module.vocab_logits(torch.tensor([c]), torch.ones(1, len(c), dtype=torch.long)), False
            )
            for c in calib
        ]
    assert torch.allclose(mean, torch.cat(one).mean(0), atol=1e-6)
    assert torch.allclose(module.head.calibration, mean)


# ---------- end to end ----------
def test_run_fewshot_end_to_end(tmp_path):
    cfg = compose(
        [
            *FEWSHOT,
            "trainer.max_epochs=1",
            "logger=csv",
            "callbacks=none",
            "dataset.n_test=100",
            "dataset.n_dev=40",
            "fewshot.n_total=40",
            "verbalizer.top_k=5",
            "verbalizer.calibrate=true",
            "verbalizer.n_calibration=20",
            "verbalizer.learn_weights=true",
            f"paths.output_dir={tmp_path}",
        ]
    )
    metrics = run(cfg)
    assert set(metrics) >= {"test/acc", "test/f1", "test/micro_f1"}
    assert all(0.0 <= metrics[k] <= 1.0 for k in ("test/acc", "test/f1", "test/micro_f1"))
    assert json.loads((tmp_path / "metrics.json").read_text()) == pytest.approx(metrics)
    rows = [json.loads(line) for line in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 100 and set(rows[0]) == {"id", "prompt", "gold", "prediction", "correct"}
    assert "<extra_id_0>" in rows[0]["prompt"]
    assert sum(r["correct"] for r in rows) / 100 == pytest.approx(metrics["test/acc"])
    labels = class_labels(load_splits(cfg.dataset).train)
    v = read_verbalizer(tmp_path / "verbalizer.txt", labels)
    assert all(1 <= len(ws) <= 5 for ws in v.words)


def test_experiment_config():
    cfg = compose(["experiment=kv_fewshot", "paths.output_dir=/tmp"])
    assert cfg.model.name == "tiny_t5" and cfg.model.arch == "t5" and cfg.trainer.max_epochs == 5
    assert cfg.dataset.name == "synthetic_en" and cfg.fewshot.n_total == 100 and cfg.verbalizer.top_k == 100
    assert compose([*FEWSHOT, "dataset=snips", "verbalizer=manual"]).verbalizer.kind == "manual"
    real = compose([*FEWSHOT, "model=t5_base_japanese", "model.pretrained_path=/nowhere/t5"])
    assert real.model.kind == "pretrained" and OmegaConf.to_container(real.model, resolve=True)


def test_experiment_selects_fewshot():
    assert compose(["experiment=kv_fewshot", "paths.output_dir=/tmp"]).task == "fewshot"


@pytest.mark.slow
def test_cli_multirun_compares_verbalizers(tmp_path):
    sweep = tmp_path / "sweep"
    cmd = [
        sys.executable, "train.py", "-m", *FEWSHOT, "verbalizer=manual,knowledgeable",
        "trainer.max_epochs=1", "dataset.n_test=100", "dataset.n_dev=40", "fewshot.n_total=40",
        "dataset.synthetic.n=600", "logger=csv",
        "callbacks.rich_progress_bar=null", f"hydra.sweep.dir={sweep}",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    runs = sorted(p for p in sweep.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert [r.name for r in runs] == ["0_verbalizer-manual", "1_verbalizer-knowledgeable"]  # what was swept
    kinds = [OmegaConf.load(r / ".hydra" / "overrides.yaml") for r in runs]  # the full override list
    assert "verbalizer=manual" in kinds[0] and "verbalizer=knowledgeable" in kinds[1]
    for job in runs:
        metrics = json.loads((job / "metrics.json").read_text())
        assert 0.0 <= metrics["test/f1"] <= 1.0 and (job / "predictions.jsonl").exists()
    manual = (runs[0] / "verbalizer.txt").read_text().splitlines()
    assert "Music: music" in manual and "Sports: sports" in manual
    assert len((runs[1] / "verbalizer.txt").read_text().splitlines()[-1].split(",")) > 5


def test_snips_knowledgeable_words():
    path = shared_data("snips")
    cfg = compose([*FEWSHOT, "dataset=snips", f"dataset.path={path}"])
    splits = load_splits(cfg.dataset)
    labels = class_labels(splits.train)
    assert len(labels) == 7
    v = knowledgeable_verbalizer(splits.train, labels, top_k=10)
    assert {"music", "album", "song"} & set(v.of("PlayMusic"))
    assert "restaurant" in v.of("BookRestaurant")[:3]
    assert "movie" in v.of("SearchScreeningEvent")[:3]
    few = knowledgeable_verbalizer(fewshot_sample(splits.train, 100, seed=42), labels, top_k=10)
    assert all(1 <= len(ws) <= 10 for ws in few.words)


# ---------- decoder-only models ----------
@pytest.fixture(scope="module")
def causal(tmp_path_factory):
    corpus = ["red apple pear kiwi car bus train this text is about"] * 30
    tok = train_tiny_tokenizer(corpus, kind="bpe", vocab_size=300, cache_dir=tmp_path_factory.mktemp("ctok"))
    model = build_model(compose(["model=tiny_llama", "model.tiny.num_hidden_layers=2"]).model, tok, seed=0)
    return tok, model.eval()


def test_causal_label_words_are_scored_as_the_prompts_continuation(causal):
    tok, _ = causal
    t = PromptTemplate("{text} This text is about {mask} .", causal=True)
    assert t.render("a car") == "a car This text is about" and t.mask_id(tok) is None
    context = tok("x This text is about").input_ids
    assert t.word_pieces(tok, "car") == tok("x This text is about car").input_ids[len(context) :]
    assert t.word_pieces(tok, "car") != word_pieces(tok, "car")  # " car" in context, not "car" alone
    chat_tok = copy.deepcopy(tok)
    chat_tok.chat_template = (
        "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}<assistant>"
    )
    chat = PromptTemplate("{text} This text is about {mask} .", causal=True, chat=True)
    assert chat.prompt_text(chat_tok, "a car") == "<user>a car This text is about<assistant>"
    base = chat_tok("<user>x This text is about<assistant>", add_special_tokens=False).input_ids
    full = chat_tok("<user>x This text is about<assistant>car", add_special_tokens=False).input_ids
    assert chat.word_pieces(chat_tok, "car") == full[len(base) :]
    with pytest.raises(TemplateError, match=r"\{text\} before \{mask\}"):
        PromptTemplate("{mask} is what {text} is about", causal=True)


def test_causal_scores_are_the_next_token_logits_of_each_unpadded_prompt(causal):
    tok, model = causal
    template = PromptTemplate("{text} This text is about {mask} .", causal=True)
    context = FewShotContext(["Car", "Fruit"], {"train": [], "dev": [], "test": []}, tok, template)
    verbalizer, pieces = tokenize_verbalizer(
        manual_verbalizer(["Car", "Fruit"]), tok, pieces_of=lambda w: template.word_pieces(tok, w)
    )
    cfg = compose(["model=tiny_llama"])
    module = PromptClassifier(cfg.model, cfg.optim, context, verbalizer, pieces, model=model)
    module.configure_model()
    texts = ["a red car and a bus on the train", "an apple"]
    batch = Collate(tok.pad_token_id, left=True)(
        [Example(template.encode(tok, t, 64), 0, i) for i, t in enumerate(texts)]
    )
    with torch.no_grad():
        got = module.vocab_logits(batch["input_ids"], batch["attention_mask"])
        for b, t in enumerate(texts):
            alone = torch.tensor([template.encode(tok, t, 64)])
            torch.testing.assert_close(got[b], model(input_ids=alone).logits[0, -1], rtol=1e-4, atol=1e-5)
    t5_cfg = compose(["model=tiny_t5"])
    with pytest.raises(ValueError, match="built for a decoder-only model"):
        PromptClassifier(t5_cfg.model, t5_cfg.optim, context, verbalizer, pieces).configure_model()


def test_fewshot_runs_on_a_decoder_only_model(tmp_path):
    cfg = compose(
        [
            *FEWSHOT,
            "model=tiny_llama",
            "model.tiny.num_hidden_layers=2",
            "trainer.max_epochs=1",
            "logger=csv",
            "callbacks=none",
            "dataset.n_test=60",
            "dataset.n_dev=20",
            "fewshot.n_total=40",
            "verbalizer.top_k=5",
            f"paths.output_dir={tmp_path}",
        ]
    )
    metrics = run(cfg)
    assert 0.0 <= metrics["test/f1"] <= 1.0
    rows = [json.loads(line) for line in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 60 and rows[0]["prompt"].endswith("This text is about")
