"""Few-shot data: the seeded sample, the prompt template (mask = T5's first sentinel) and a
LightningDataModule of right-padded encoder inputs with class indices.

Class indices follow the sorted text labels of the whole training split; a test record whose label
never occurs in training gets the extra index C (never predicted, so always wrong), as in the
generative TLI task.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase

from mre.data.batches import SplitDataModule, position_ids
from mre.data.record import Record
from mre.data.splits import k_shot, n_total_sample
from mre.errors import ConfigError, UserError
from mre.tasks.fewshot.verbalizer import word_pieces

log = logging.getLogger(__name__)

SENTINEL = "<extra_id_0>"


class TemplateError(UserError, ValueError):
    """A prompt template or tokenizer cannot express the few-shot prompt."""


def fewshot_sample(
    records: list[Record], n_total: int | None = 100, k_per_class: int | None = None, seed: int = 42
) -> list[Record]:
    """K per class when `k_per_class` is set, else N in total (the paper's 100), seeded; records
    without a text label are never sampled."""
    labelled = [r for r in records if r.tli is not None]
    if k_per_class is not None:
        if k_per_class < 1:
            raise ConfigError(f"fewshot.k_per_class must be >= 1, got {k_per_class}")
        return k_shot(labelled, k_per_class, seed)
    if n_total is None or n_total < 1:
        raise ConfigError(f"fewshot.n_total must be >= 1 (or set fewshot.k_per_class), got {n_total}")
    if n_total > len(labelled):
        log.warning("fewshot.n_total=%d but the training split has %d records", n_total, len(labelled))
    return n_total_sample(labelled, n_total, seed)


def class_labels(train: list[Record]) -> list[str]:
    """The sorted text labels of the training split; a data set without them cannot be classified."""
    labels = sorted({r.tli for r in train if r.tli is not None})
    if len(labels) < 2:
        raise ConfigError(
            f"the few-shot classifier needs text labels (TLI) of at least two classes in the training "
            f"split; found {labels}"
        )
    return labels


@dataclass(frozen=True)
class PromptTemplate:
    """`template` with one `{text}` and one `{mask}`.

    Encoder-decoder models (T5) read the whole template with the mask as the first sentinel and score
    label words at the first decoding step. Decoder-only models (`causal`) read the template up to the
    mask and score label words as the next token; with `chat`, that prompt is the user turn of the
    tokenizer's chat template and the label word begins the assistant turn.
    """

    template: str
    mask_token: str = SENTINEL
    causal: bool = False
    chat: bool = False

    def __post_init__(self) -> None:
        for slot in ("{text}", "{mask}"):
            if self.template.count(slot) != 1:
                raise TemplateError(
                    f"fewshot.template must contain {slot} exactly once, got {self.template!r}"
                )
        if self.causal and self.template.index("{text}") > self.template.index("{mask}"):
            raise TemplateError(f"a decoder-only model needs {{text}} before {{mask}}: {self.template!r}")

    @property
    def _before_mask(self) -> str:
        return self.template.split("{mask}")[0]

    def render(self, text: str) -> str:
        """The template filled in: with the sentinel (seq2seq), or up to the mask (causal)."""
        if self.causal:
            return self._before_mask.rstrip().replace("{text}", text)
        return self.template.replace("{text}", text).replace("{mask}", self.mask_token)

    def prompt_text(self, tokenizer: PreTrainedTokenizerBase, text: str) -> str:
        """What the model reads: the rendered template, in the chat template's user turn with `chat`."""
        user = self.render(text)
        if not self.chat:
            return user
        turn = [{"role": "user", "content": user}]
        return tokenizer.apply_chat_template(turn, add_generation_prompt=True, tokenize=False)

    def _ids(self, tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
        return tokenizer(self.prompt_text(tokenizer, text), add_special_tokens=not self.chat).input_ids

    def mask_id(self, tokenizer: PreTrainedTokenizerBase) -> int | None:
        """The sentinel's id (None for decoder-only models); a seq2seq tokenizer without it fails clearly."""
        if self.causal:
            return None
        ids = tokenizer.convert_tokens_to_ids([self.mask_token])
        if not ids or ids[0] is None or ids[0] == tokenizer.unk_token_id:
            raise TemplateError(
                f"the tokenizer has no {self.mask_token} token: an encoder-decoder few-shot classifier "
                "needs a T5-style tokenizer with sentinel tokens"
            )
        return ids[0]

    def encode(self, tokenizer: PreTrainedTokenizerBase, text: str, max_length: int) -> list[int]:
        """Token ids of the prompt (with the tokenizer's or the chat template's special tokens); a text
        too long for `max_length` is shortened, the template never is."""
        ids = self._ids(tokenizer, text)
        if len(ids) > max_length:
            text_ids = tokenizer.encode(text, add_special_tokens=False)
            budget = max(0, len(text_ids) - (len(ids) - max_length))
            while True:
                ids = self._ids(tokenizer, tokenizer.decode(text_ids[:budget], skip_special_tokens=True))
                if len(ids) <= max_length or budget == 0:
                    break
                budget -= 1
        mask = self.mask_id(tokenizer)
        if mask is not None and mask not in ids:
            raise TemplateError(f"the prompt lost its mask token after shortening to {max_length} tokens")
        return ids

    def word_pieces(
        self, tokenizer: PreTrainedTokenizerBase, word: str, strip_space_piece: bool = True
    ) -> list[int]:
        """The token ids a label word is scored by: in the decoder's first step (seq2seq, see
        `verbalizer.word_pieces`), or as the prompt's continuation (causal): the tokens of
        `prompt + separator + word` after the prompt's own, so `" sports"` and `"sports"` are told apart."""
        if not self.causal:
            return word_pieces(tokenizer, word, strip_space_piece)
        context = self.prompt_text(tokenizer, "x")
        sep = "" if self.chat else self._before_mask[len(self._before_mask.rstrip()) :]
        base = tokenizer(context, add_special_tokens=not self.chat).input_ids
        full = tokenizer(context + sep + word, add_special_tokens=not self.chat).input_ids
        if full[: len(base)] != base:
            raise TemplateError(
                f"label word {word!r} merges with the end of the prompt under this tokenizer; end the "
                "template before {mask} with a space or a punctuation mark"
            )
        return full[len(base) :]


@dataclass(frozen=True)
class Example:
    ids: list[int]
    label: int
    index: int


class Collate:
    """Pads a batch of prompts: to the right for encoder-decoders (T5 uses relative positions; the mask
    hides the padding), to the left with explicit positions for decoder-only models (the label word
    follows the last position of every row)."""

    def __init__(self, pad_id: int, left: bool = False) -> None:
        self.pad_id, self.left = pad_id, left

    def __call__(self, items: list[Example]) -> dict[str, torch.Tensor]:
        width = max(len(e.ids) for e in items)
        ids = torch.full((len(items), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(items), width), dtype=torch.long)
        for b, e in enumerate(items):
            span = slice(width - len(e.ids), width) if self.left else slice(0, len(e.ids))
            ids[b, span] = torch.tensor(e.ids)
            mask[b, span] = 1
        return {
            "input_ids": ids,
            "attention_mask": mask,
            "position_ids": position_ids(mask),
            "labels": torch.tensor([e.label for e in items]),
            "index": torch.tensor([e.index for e in items]),
        }


@dataclass(frozen=True)
class FewShotContext:
    """The few-shot sample (`train`), the dev and test splits, the labels and the prompt template of
    one run, built once; the DataModule and the module both read it."""

    labels: list[str]
    splits: dict[str, list[Record]]
    tokenizer: PreTrainedTokenizerBase
    template: PromptTemplate
    max_length: int = 256

    def records(self, split: str) -> list[Record]:
        return self.splits["dev" if split == "val" else split]

    def prompt(self, split: str, i: int) -> str:
        return self.template.render(self.records(split)[i].text)

    def label_index(self, label: str | None) -> int:
        """Class index of a label; labels unseen in training get the extra index C."""
        return self.labels.index(label) if label in self.labels else len(self.labels)

    def encode_texts(self, texts: list[str]) -> list[list[int]]:
        """Prompts of texts (the splits, and unlabeled texts for contextual calibration)."""
        return [self.template.encode(self.tokenizer, t, self.max_length) for t in texts]


class FewShotDataModule(SplitDataModule):
    """The few-shot train sample, the dev split (val/f1) and the test split as prompts."""

    def __init__(
        self,
        context: FewShotContext,
        batch_size: int = 16,
        eval_batch_size: int = 32,
        num_workers: int = 0,
        seed: int = 42,
    ) -> None:
        super().__init__(batch_size, eval_batch_size, num_workers, seed)
        self.context = context
        self.examples: dict[str, list[Example]] = {}

    def setup(self, stage: str | None = None) -> None:
        if self.examples:
            return
        ctx = self.context
        ctx.template.mask_id(ctx.tokenizer)  # fails clearly for a seq2seq tokenizer without sentinels
        for name, recs in ctx.splits.items():
            ids = ctx.encode_texts([r.text for r in recs])
            self.examples[name] = [
                Example(x, ctx.label_index(r.tli), i) for i, (x, r) in enumerate(zip(ids, recs, strict=True))
            ]
        unseen = sum(1 for e in self.examples["test"] if e.label == len(ctx.labels))
        if unseen:
            log.warning("%d test samples have a text label never seen in training: scored as wrong", unseen)

    def samples(self, split: str) -> list[Example]:
        return self.examples[split]

    def collate(self) -> Collate:
        return Collate(self.context.tokenizer.pad_token_id, left=self.context.template.causal)
