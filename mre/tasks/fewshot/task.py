"""The few-shot task (`task: fewshot`, `python train.py experiment=kv_fewshot`): splits -> few-shot
sample -> verbalizer -> tokenizer -> T5 prompt classifier; the runner then fits it (N samples,
val/f1 on the dev split) and tests the best checkpoint. The run directory gets `verbalizer.txt`
(written here, before training) besides the runner's `metrics.json` and `predictions.jsonl`.

Verbalizer: `verbalizer.path` reads a file (e.g. an edited `verbalizer.txt`); otherwise `manual`
takes the label names (or `verbalizer.words`), `knowledgeable` the top-K WLI words per class from
`verbalizer.source`: `train` (default) = the WLI of the whole training split, i.e. word-level
knowledge from outside the labelled few-shot sample (its text labels are used only to group the
words by class); `fewshot` = the WLI of the sampled records only.

Tiny models: the T5-style tokenizer is trained on the training texts rendered into the template,
plus the label words and the knowledgeable candidate words (repeated, so that they become whole
tokens). The candidates are computed from the knowledgeable settings whatever `verbalizer.kind`
is, so a manual and a knowledgeable run of a sweep get the same tokenizer and the same initial
weights: the comparison changes only the verbalizer.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from mre.data.context import use_chat_template
from mre.data.dataset import load_splits
from mre.data.options import DataConfig, DatasetConfig
from mre.data.record import Record
from mre.data.splits import Splits, n_total_sample
from mre.data.tokenizer import load_tokenizer, train_tiny_tokenizer
from mre.errors import ConfigError
from mre.hub import model_folder
from mre.model_options import ModelConfig, ModelKind
from mre.models import is_encoder_decoder
from mre.rundir import PREDICTIONS
from mre.tasks.base import TaskParts
from mre.tasks.fewshot.data import (
    FewShotContext,
    FewShotDataModule,
    PromptTemplate,
    class_labels,
    fewshot_sample,
)
from mre.tasks.fewshot.module import PromptClassifier
from mre.tasks.fewshot.options import FewShotConfig, VerbalizerConfig, VerbalizerKind, WordSource
from mre.tasks.fewshot.verbalizer import (
    PiecesOf,
    Verbalizer,
    check_choice,
    knowledgeable_verbalizer,
    label_word,
    manual_verbalizer,
    read_verbalizer,
    tokenize_verbalizer,
    write_verbalizer,
)

log = logging.getLogger(__name__)

WORD_REPEATS = 20  # how often the label words enter a tiny tokenizer's corpus (so they merge whole)


def build_verbalizer(
    vcfg: VerbalizerConfig,
    labels: list[str],
    sample: list[Record],
    train: list[Record],
    tokenizer=None,
    kind: VerbalizerKind | None = None,
    pieces_of: PiecesOf | None = None,
) -> Verbalizer:
    """The verbalizer of a config (before tokenization); `kind` overrides `vcfg.kind`."""
    kind = check_choice("verbalizer.kind", kind or vcfg.kind, VerbalizerKind)
    if vcfg.path:
        return read_verbalizer(vcfg.path, labels)
    if kind is VerbalizerKind.manual:
        return manual_verbalizer(labels, vcfg.words, vcfg.label_form)
    from_train = check_choice("verbalizer.source", vcfg.source, WordSource) is WordSource.train
    return knowledgeable_verbalizer(
        train if from_train else sample,
        labels,
        top_k=vcfg.top_k,
        min_count=vcfg.min_count,
        drop_shared=vcfg.drop_shared,
        unit=vcfg.unit,
        max_pieces=vcfg.max_pieces if tokenizer is not None else None,
        tokenizer=tokenizer,
        label_form=vcfg.label_form,
        strip_space_piece=vcfg.strip_space_piece,
        source_name="the training split" if from_train else "the few-shot sample",
        pieces_of=pieces_of,
    )


def build_tokenizer(
    model: ModelConfig, cache_dir: str, splits: Splits, template: PromptTemplate, words: list[str]
):
    """A real tokenizer from the model's folder, or a tiny one (T5-style with sentinels for an
    encoder-decoder) trained on the rendered training texts and the label words."""
    if model.kind is ModelKind.pretrained:
        return load_tokenizer(model_folder(model, cache_dir))
    corpus = [template.render(r.text) for r in splits.train]
    line = " ".join(dict.fromkeys(words))
    corpus += [line] * WORD_REPEATS
    held_out = "".join(r.text for r in splits.dev + splits.test)
    return train_tiny_tokenizer(
        corpus,
        kind=model.tokenizer.kind,
        vocab_size=model.tokenizer.vocab_size,
        cache_dir=cache_dir,
        extra_alphabet=held_out,
        seq2seq=not template.causal,
    )


def _header(v: VerbalizerConfig, dataset: DatasetConfig, n_sample: int) -> str:
    if v.path:
        what = f"read from {v.path}"
    elif v.kind is VerbalizerKind.manual:
        what = "manual" + (" (user words)" if v.words else f" (label names, label_form={v.label_form})")
    else:
        what = (
            f"knowledgeable: source={v.source}, unit={v.unit}, top_k={v.top_k}, min_count={v.min_count}, "
            f"drop_shared={v.drop_shared}, max_pieces={v.max_pieces}"
        )
    return f"mre-flow verbalizer for {dataset.name} ({n_sample} few-shot samples): {what}"


def build(cfg: DictConfig, run_dir: Path) -> TaskParts:
    """The few-shot task of a config: sample, verbalizer (written to `verbalizer.txt`), tokenizer,
    data module and prompt classifier. The option groups become their dataclasses here, once."""
    fs: FewShotConfig = OmegaConf.to_object(cfg.fewshot)
    vcfg: VerbalizerConfig = OmegaConf.to_object(cfg.verbalizer)
    dataset: DatasetConfig = OmegaConf.to_object(cfg.dataset)
    model: ModelConfig = OmegaConf.to_object(cfg.model)
    data: DataConfig = OmegaConf.to_object(cfg.data)
    seed, cache_dir = int(cfg.seed), str(cfg.paths.cache_dir)
    splits = load_splits(dataset)
    labels = class_labels(splits.train)
    sample_seed = seed if fs.sample_seed is None else fs.sample_seed
    sample = fewshot_sample(splits.train, fs.n_total, fs.k_per_class, sample_seed)
    dev = splits.dev if fs.n_dev is None else n_total_sample(splits.dev, fs.n_dev, sample_seed)
    lang = str(dataset.language)
    if lang not in fs.template:
        raise ConfigError(
            f"fewshot.template has no template for language {lang!r} (has {sorted(fs.template)})"
        )
    template = PromptTemplate(fs.template[lang], causal=not is_encoder_decoder(model, cache_dir))
    log.info(
        "few-shot: %d training samples of %d classes, %d dev, %d test",
        len(sample),
        len(labels),
        len(dev),
        len(splits.test),
    )

    vocab_words: list[str] = []
    if model.kind is not ModelKind.pretrained:
        vocab_words = [label_word(lab, vcfg.label_form) for lab in labels]
        vocab_words += build_verbalizer(
            vcfg, labels, sample, splits.train, kind=VerbalizerKind.knowledgeable
        ).all_words()
        vocab_words += build_verbalizer(vcfg, labels, sample, splits.train).all_words()
    tokenizer = build_tokenizer(model, cache_dir, splits, template, vocab_words)
    chat = template.causal and use_chat_template(cfg.prompt.chat_template, tokenizer)
    template = dataclasses.replace(template, chat=chat)

    def pieces_of(word: str) -> list[int]:
        return template.word_pieces(tokenizer, word, vcfg.strip_space_piece)

    verbalizer = build_verbalizer(
        vcfg, labels, sample, splits.train, tokenizer=tokenizer, pieces_of=pieces_of
    )
    verbalizer, pieces = tokenize_verbalizer(
        verbalizer, tokenizer, vcfg.strip_space_piece, vcfg.label_form, pieces_of=pieces_of
    )
    if rank_zero_only.rank == 0:
        path = write_verbalizer(verbalizer, run_dir / "verbalizer.txt", _header(vcfg, dataset, len(sample)))
        log.info("verbalizer (%s) written to %s", vcfg.kind, path)

    context = FewShotContext(
        labels, {"train": sample, "dev": dev, "test": splits.test}, tokenizer, template, fs.max_length
    )
    dm = FewShotDataModule(
        context,
        batch_size=data.batch_size,
        eval_batch_size=data.eval_batch_size,
        num_workers=data.num_workers,
        seed=seed,
    )
    calibration_ids = None
    if vcfg.calibrate:
        calibration_ids = context.encode_texts(
            [r.text for r in n_total_sample(splits.train, vcfg.n_calibration, sample_seed)]
        )
    module = PromptClassifier(
        model_cfg=model,
        optim_cfg=OmegaConf.to_object(cfg.optim),
        context=context,
        verbalizer=verbalizer,
        pieces=pieces,
        multi_token=vcfg.multi_token,
        aggregate=vcfg.aggregate,
        calibrate=vcfg.calibrate,
        learn_weights=vcfg.learn_weights,
        mask_id=template.mask_id(tokenizer),
        sentinel_first=fs.sentinel_first,
        calibration_ids=calibration_ids,
        eval_batch_size=data.eval_batch_size,
        seed=seed,
        cache_dir=cache_dir,
        predictions_path=run_dir / PREDICTIONS,
    )
    title = f"{dataset.name} | fewshot {len(sample)} | verbalizer={vcfg.kind} | {model.name}"
    return TaskParts(dm, module, title)
