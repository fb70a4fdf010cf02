"""One few-shot run (`task: fewshot`, `python train.py experiment=kv_fewshot`): splits -> few-shot
sample -> verbalizer -> tokenizer -> T5 prompt classifier -> fit (N samples, val/f1 on the dev
split) -> test (best checkpoint by val/f1) -> `verbalizer.txt`, `metrics.json`,
`predictions.jsonl` in the run directory.

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

import logging
from pathlib import Path

import hydra
import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from mre.data.datamodule import load_splits
from mre.data.record import Record
from mre.data.splits import Splits, n_total_sample
from mre.data.tokenizer import load_tokenizer, train_tiny_tokenizer
from mre.fewshot.data import FewShotDataModule, PromptTemplate, class_labels, fewshot_sample
from mre.fewshot.module import PromptClassifier
from mre.fewshot.verbalizer import (
    KINDS,
    SOURCES,
    Verbalizer,
    check_choice,
    knowledgeable_verbalizer,
    label_word,
    manual_verbalizer,
    read_verbalizer,
    tokenize_verbalizer,
    write_verbalizer,
)
from mre.results import print_metrics, write_metrics
from mre.run import instantiate_all, resolve_ckpt

log = logging.getLogger(__name__)

WORD_REPEATS = 20  # how often the label words enter a tiny tokenizer's corpus (so they merge whole)


def _value(x):
    return getattr(x, "value", x)


def build_verbalizer(
    vcfg: DictConfig,
    labels: list[str],
    sample: list[Record],
    train: list[Record],
    tokenizer=None,
    kind: str | None = None,
) -> Verbalizer:
    """The verbalizer of a config (before tokenization); `kind` overrides `vcfg.kind`."""
    kind = check_choice("verbalizer.kind", kind or vcfg.kind, KINDS)
    if vcfg.path:
        return read_verbalizer(vcfg.path, labels)
    if kind == "manual":
        words = OmegaConf.to_container(vcfg.words, resolve=True) if vcfg.words else {}
        return manual_verbalizer(labels, words, vcfg.label_form)
    source = check_choice("verbalizer.source", vcfg.source, SOURCES)
    records = train if source == "train" else sample
    return knowledgeable_verbalizer(
        records,
        labels,
        top_k=vcfg.top_k,
        min_count=vcfg.min_count,
        drop_shared=vcfg.drop_shared,
        unit=vcfg.unit,
        max_pieces=vcfg.max_pieces if tokenizer is not None else None,
        tokenizer=tokenizer,
        label_form=vcfg.label_form,
        strip_space_piece=vcfg.strip_space_piece,
        source_name="the training split" if source == "train" else "the few-shot sample",
    )


def build_tokenizer(cfg: DictConfig, splits: Splits, template: PromptTemplate, words: list[str]):
    """A real tokenizer from the model's folder, or a tiny T5-style one (see the module docstring)."""
    if cfg.model.kind == "pretrained":
        try:
            return load_tokenizer(cfg.model.pretrained_path)
        except FileNotFoundError as e:
            raise FileNotFoundError(
                f"model {cfg.model.name!r}: {cfg.model.pretrained_path!r} is not a local folder and no "
                "model hub is reachable here. Download the model elsewhere (e.g. sonoisa/t5-base-japanese), "
                "copy the folder and set model.pretrained_path=/path/to/it (or MRE_T5_JA_PATH)."
            ) from e
    corpus = [template.render(r.text) for r in splits.train]
    line = " ".join(dict.fromkeys(words))
    corpus += [line] * WORD_REPEATS
    held_out = "".join(r.text for r in splits.dev + splits.test)
    return train_tiny_tokenizer(
        corpus,
        kind=cfg.model.tokenizer.kind,
        vocab_size=cfg.model.tokenizer.vocab_size,
        cache_dir=cfg.paths.cache_dir,
        extra_alphabet=held_out,
        seq2seq=True,
    )


def _header(cfg: DictConfig, n_sample: int) -> str:
    v = cfg.verbalizer
    if v.path:
        what = f"read from {v.path}"
    elif v.kind == "manual":
        what = "manual" + (" (user words)" if v.words else f" (label names, label_form={v.label_form})")
    else:
        what = (
            f"knowledgeable: source={v.source}, unit={v.unit}, top_k={v.top_k}, min_count={v.min_count}, "
            f"drop_shared={v.drop_shared}, max_pieces={v.max_pieces}"
        )
    return f"mre-flow verbalizer for {cfg.dataset.name} ({n_sample} few-shot samples): {what}"


def run_fewshot(cfg: DictConfig) -> dict[str, float]:
    """Fit and test the few-shot prompt classifier of a composed config; returns the flat test
    metrics (`test/acc`, `test/f1` = macro-F1, `test/micro_f1`) written to metrics.json."""
    L.seed_everything(cfg.seed, workers=True)
    output_dir = Path(cfg.paths.output_dir)
    fs, vcfg = cfg.fewshot, cfg.verbalizer
    splits = load_splits(cfg.dataset)
    labels = class_labels(splits.train)
    seed = cfg.seed if fs.sample_seed is None else fs.sample_seed
    sample = fewshot_sample(splits.train, fs.n_total, fs.k_per_class, seed)
    dev = splits.dev if fs.n_dev is None else n_total_sample(splits.dev, fs.n_dev, seed)
    lang = str(_value(cfg.dataset.language))
    if lang not in fs.template:
        raise KeyError(f"fewshot.template has no template for language {lang!r} (has {sorted(fs.template)})")
    template = PromptTemplate(fs.template[lang])
    log.info(
        "few-shot: %d training samples of %d classes, %d dev, %d test",
        len(sample),
        len(labels),
        len(dev),
        len(splits.test),
    )

    vocab_words: list[str] = []
    if cfg.model.kind != "pretrained":
        vocab_words = [label_word(lab, vcfg.label_form) for lab in labels]
        vocab_words += build_verbalizer(vcfg, labels, sample, splits.train, kind="knowledgeable").all_words()
        vocab_words += build_verbalizer(vcfg, labels, sample, splits.train).all_words()
    tokenizer = build_tokenizer(cfg, splits, template, vocab_words)
    verbalizer = build_verbalizer(vcfg, labels, sample, splits.train, tokenizer=tokenizer)
    verbalizer, pieces = tokenize_verbalizer(verbalizer, tokenizer, vcfg.strip_space_piece, vcfg.label_form)
    if rank_zero_only.rank == 0:
        path = write_verbalizer(verbalizer, output_dir / "verbalizer.txt", _header(cfg, len(sample)))
        log.info("verbalizer (%s) written to %s", vcfg.kind, path)

    dm = FewShotDataModule(
        sample,
        dev,
        splits.test,
        labels,
        tokenizer,
        template,
        batch_size=cfg.data.batch_size,
        eval_batch_size=cfg.data.eval_batch_size,
        max_length=fs.max_length,
        num_workers=cfg.data.num_workers,
        seed=cfg.seed,
    )
    calibration_ids = None
    if vcfg.calibrate:
        texts = [r.text for r in n_total_sample(splits.train, vcfg.n_calibration, seed)]
        calibration_ids = dm.encode_texts(texts)
    module = PromptClassifier(
        model_cfg=cfg.model,
        optim_cfg=cfg.optim,
        tokenizer=tokenizer,
        verbalizer=verbalizer,
        pieces=pieces,
        multi_token=vcfg.multi_token,
        aggregate=vcfg.aggregate,
        calibrate=vcfg.calibrate,
        learn_weights=vcfg.learn_weights,
        mask_id=template.mask_id(tokenizer),
        sentinel_first=fs.sentinel_first,
        calibration_ids=calibration_ids,
        eval_batch_size=cfg.data.eval_batch_size,
        seed=cfg.seed,
        cache_dir=cfg.paths.cache_dir,
        predictions_path=output_dir / "predictions.jsonl",
    )
    callbacks = []
    for cb in instantiate_all(cfg.callbacks):
        if type(cb).__module__.startswith("mre.flow"):  # causal-LM saliency flow: not for T5 prompts
            log.warning("few-shot run: callback %s does not apply and is skipped", type(cb).__name__)
        else:
            callbacks.append(cb)
    trainer: L.Trainer = hydra.utils.instantiate(
        cfg.trainer, logger=instantiate_all(cfg.logger), callbacks=callbacks
    )
    for lg in trainer.loggers:
        lg.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
    ckpt = resolve_ckpt(cfg.ckpt_path, output_dir)
    if cfg.get("fit", True):
        trainer.fit(module, datamodule=dm, ckpt_path=ckpt)
        ckpt = next((c.best_model_path for c in trainer.callbacks if isinstance(c, ModelCheckpoint)), "")
    trainer.test(module, datamodule=dm, ckpt_path=ckpt or None)
    metrics = {k: float(v) for k, v in sorted(trainer.callback_metrics.items()) if k.startswith("test/")}
    if trainer.is_global_zero:
        write_metrics(output_dir / "metrics.json", metrics)
        title = f"{cfg.dataset.name} | fewshot {len(sample)} | verbalizer={vcfg.kind} | {cfg.model.name}"
        print_metrics(metrics, title, output_dir)
    return metrics
