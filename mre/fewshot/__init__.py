"""Few-shot T5 prompt classification with manual and knowledgeable (WLI) verbalizers (the paper's
Section 4): `python train.py experiment=kv_fewshot [verbalizer=manual|knowledgeable]`."""

from mre.fewshot.data import FewShotDataModule, PromptTemplate, fewshot_sample
from mre.fewshot.module import PromptClassifier, first_step_logits
from mre.fewshot.verbalizer import (
    Verbalizer,
    VerbalizerError,
    VerbalizerHead,
    knowledgeable_verbalizer,
    manual_verbalizer,
    read_verbalizer,
    tokenize_verbalizer,
    write_verbalizer,
)

__all__ = [
    "FewShotDataModule",
    "PromptClassifier",
    "PromptTemplate",
    "Verbalizer",
    "VerbalizerError",
    "VerbalizerHead",
    "fewshot_sample",
    "first_step_logits",
    "knowledgeable_verbalizer",
    "manual_verbalizer",
    "read_verbalizer",
    "run_fewshot",
    "tokenize_verbalizer",
    "write_verbalizer",
]


def run_fewshot(cfg):
    """See `mre.fewshot.run.run_fewshot` (imported lazily: it pulls in the whole training stack)."""
    from mre.fewshot.run import run_fewshot as _run

    return _run(cfg)
