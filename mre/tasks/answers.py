"""How a causal LM answers a prompt, shared by evaluation (`mre.tasks.generative`) and the attention
knockout (`mre.analysis.knockout_run`), so both read a model's answer the same way:

* TLI: the arg-max over the one-token label codes of the logits at q (no `generate()`);
* WLI: greedy, batched, KV-cached decoding of the left-padded prompt, one line long.
"""

from __future__ import annotations

import torch
from transformers import PreTrainedTokenizerBase

from mre.data.prompts import PromptBuilder

ANSWER_END = "\n"  # answers are one line: generation stops at the first newline


def code_predictions(q_logits: torch.Tensor, code_ids: list[int]) -> torch.Tensor:
    """Per sample, the index (into the builder's labels) of the code token scored highest among the
    codes only, from the logits at q [B, vocab]."""
    codes = torch.tensor(code_ids, device=q_logits.device)
    return q_logits[:, codes].argmax(-1)


@torch.no_grad()
def generate_answers(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    builder: PromptBuilder,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    max_new_tokens: int,
) -> list[str]:
    """Greedy, batched, KV-cached decoding of left-padded prompts; returns answer strings. The one
    decoding of the project: evaluation and the attention knockout answer alike.

    An answer is one line (`WLIFormat` refuses line breaks), so a sequence stops at the end of turn or
    EOS (`stop_ids`) and at a newline: a model that never ends its answer would otherwise write the
    rest of a prompt into the last span. A stopped sequence's text may still hold the stop string (a
    token can carry more than the newline), so the text is cut at its first newline."""
    out = model.generate(
        input_ids=prompt_ids,
        attention_mask=prompt_mask,
        max_new_tokens=max_new_tokens,
        do_sample=False,
        num_beams=1,
        use_cache=True,
        eos_token_id=builder.stop_ids,
        stop_strings=[ANSWER_END],
        tokenizer=tokenizer,
        pad_token_id=tokenizer.pad_token_id,
    )
    new = out[:, prompt_ids.shape[1] :]
    texts = tokenizer.batch_decode(new, skip_special_tokens=True)
    return [t.split(ANSWER_END, 1)[0].strip() for t in texts]
