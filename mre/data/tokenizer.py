"""Tokenizers: a real one from a local path, or a tiny one trained on the run's own texts.

Tiny tokenizers let every test and the default run work offline in seconds with the same code
path as a real model. Two kinds mirror the two families users meet:

- `bpe`: byte-level BPE (GPT-2 / Qwen / LLaMA-3 style): no unknown tokens by construction;
- `llama`: a sentencepiece-like BPE (Metaspace word boundary `▁`, digits split one by one as
  LLaMA-2 does, punctuation kept apart so `type:span;type:span` never merges into one
  token). Its alphabet is every character of the corpus and the extra alphabet, so text in
  any script (Japanese included) tokenizes without `<unk>`.

Trained tokenizers are cached on disk under a key of (kind, vocab size, corpus hash), so a sweep
trains each one once.
"""

from __future__ import annotations

import hashlib
import logging
import os
import string
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from mre.hub import WeightsError
from mre.model_options import TokenizerKind

log = logging.getLogger(__name__)

SPECIALS = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>"}
BUILD_VERSION = 2  # part of the cache key: bump when a builder below changes
T5_SPECIALS = {"eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>"}


def _corpus_key(kind: str, vocab_size: int, texts: list[str], alphabet: str, extra: str) -> str:
    h = hashlib.sha256(f"{BUILD_VERSION}|{kind}|{vocab_size}|{extra}|{alphabet}".encode())
    for t in texts:
        h.update(t.encode("utf-8"))
        h.update(b"\x00")
    return h.hexdigest()[:16]


def _build_bpe(
    vocab_size: int, alphabet: list[str], specials: list[str]
) -> tuple[Tokenizer, trainers.Trainer]:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    return tok, trainer


def _build_llama(
    vocab_size: int, alphabet: list[str], specials: list[str]
) -> tuple[Tokenizer, trainers.Trainer]:
    tok = Tokenizer(models.BPE(unk_token=SPECIALS["unk_token"], fuse_unk=True))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split("\n", behavior="isolated"),
            pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first"),
            pre_tokenizers.Punctuation(behavior="isolated"),
            pre_tokenizers.Digits(individual_digits=True),
        ]
    )
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=sorted(set(alphabet) | {"▁"}),
        limit_alphabet=len(alphabet) + 1,
        show_progress=False,
    )
    return tok, trainer


def _wrap(tok: Tokenizer, specials: dict[str, str], add_bos: bool) -> PreTrainedTokenizerFast:
    if add_bos:
        bos = specials["bos_token"]
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A $B", special_tokens=[(bos, tok.token_to_id(bos))]
        )
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tok, **specials)
    wrapped.padding_side = "left"
    return wrapped


def train_tiny_tokenizer(
    texts: Iterable[str],
    kind: TokenizerKind = TokenizerKind.bpe,
    vocab_size: int = 2000,
    cache_dir: str | Path | None = None,
    extra_alphabet: str = "",
    seq2seq: bool = False,
) -> PreTrainedTokenizerFast:
    """Train (or load from cache) a tiny tokenizer of `kind` on `texts`.

    `extra_alphabet` adds characters that must never be unknown (e.g. all characters of the
    dev/test texts: the alphabet, not the merges, so no statistics leak from held-out data).
    `seq2seq=True` makes a T5-style tokenizer: no BOS, EOS appended, sentinel `<extra_id_0..9>`.
    """
    kind = TokenizerKind(kind)  # a plain "bpe" too; anything else is a ValueError naming the enum
    texts = list(texts)
    specials = dict(T5_SPECIALS if seq2seq else SPECIALS)
    special_list = list(specials.values()) + ([f"<extra_id_{i}>" for i in range(10)] if seq2seq else [])
    alphabet = "".join(sorted(set("".join(texts)) | set(extra_alphabet) | set(string.printable)))
    key = _corpus_key(
        kind.value + ("-s2s" if seq2seq else ""), vocab_size, texts, alphabet, ",".join(special_list)
    )
    cache = Path(cache_dir or os.environ.get("MRE_CACHE", Path.home() / ".cache" / "mre-flow")) / "tokenizers"
    path = cache / f"{kind}-{key}"
    if (path / "tokenizer.json").exists():
        return _load_cached(path)
    builder = _build_bpe if kind is TokenizerKind.bpe else _build_llama
    tok, trainer = builder(vocab_size, list(alphabet), special_list)
    tok.train_from_iterator([*texts, alphabet], trainer=trainer)
    if seq2seq:
        eos = specials["eos_token"]
        tok.post_processor = processors.TemplateProcessing(
            single=f"$A {eos}", pair=f"$A {eos} $B {eos}", special_tokens=[(eos, tok.token_to_id(eos))]
        )
        wrapped = PreTrainedTokenizerFast(
            tokenizer_object=tok, additional_special_tokens=special_list[3:], **specials
        )
        wrapped.padding_side = "right"
    else:
        wrapped = _wrap(tok, specials, add_bos=True)
    path.mkdir(parents=True, exist_ok=True)
    wrapped.save_pretrained(path)
    log.info("trained a tiny %s tokenizer (%d tokens) -> %s", kind, len(wrapped), path)
    return wrapped


def _load_cached(path: Path) -> PreTrainedTokenizerFast:
    return PreTrainedTokenizerFast.from_pretrained(str(path))


def load_tokenizer(folder: str | Path) -> PreTrainedTokenizerBase:
    """The tokenizer saved in a local model folder (see `mre.hub.model_folder`), left-padding."""
    try:
        tok = AutoTokenizer.from_pretrained(str(folder))
    except (OSError, ValueError, TypeError) as e:
        raise WeightsError(
            f"no usable tokenizer in {folder} ({type(e).__name__}: {str(e).splitlines()[0][:200]}); expected "
            "tokenizer.json (or tokenizer.model) and tokenizer_config.json beside config.json"
        ) from e
    if tok.pad_token is None:
        tok.pad_token = tok.unk_token or tok.eos_token
    tok.padding_side = "left"
    return tok
