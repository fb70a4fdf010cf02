"""Plain reference for the saliency flow metrics (docs/design.md), written the obvious way.

One sample at a time with its padding stripped, eager attention with ``output_attentions=True``,
``retain_grad()`` on every returned attention tensor, a full backward, I_l from the full maps, and the
pair sets as explicit Python sets. Slow, but obviously the definition; the engine is tested against it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def pair_sets(
    n: int, q: int, text: tuple[int, int], anchor: tuple[int, int], sources: str, exclude_bos: bool
):
    """C_wp, C_pq, C_ww over unpadded positions 0..n-1 (position 0 is the first token)."""
    P = set(range(*anchor))
    T = set(range(*text))
    all_pairs = {(i, j) for i in range(q + 1) for j in range(i)}  # j < i <= q, diagonal excluded
    if exclude_bos:
        all_pairs = {(i, j) for (i, j) in all_pairs if j != 0}
    if sources == "text":
        c_wp = {(p, j) for p in P for j in T if j < p}
    else:
        c_wp = {(p, j) for p in P for j in range(p)}
    c_wp &= all_pairs
    c_pq = {(q, p) for p in P} & all_pairs
    c_ww = all_pairs - c_wp - c_pq
    return c_wp, c_pq, c_ww


def reference_flow(
    model,
    sample: dict,
    sources: str = "text",
    loss: str = "full_vocab",
    normalize: str = "none",
    exclude_bos: bool = False,
    label_token_ids: list[int] | None = None,
    bos_token_id: int | None = None,
):
    """Flow metrics of ONE unpadded sample; `exclude_bos` drops position 0 when it is `bos_token_id`.

    ``sample``: {"input_ids": list[int], "text": (s, e), "anchor": (s, e), "q": int, "target": int}.
    The model must run eager attention (``output_attentions=True`` needs it).
    Returns (s_wp, s_pq, s_ww) as lists over layers, counts (n_wp, n_pq, n_ww) and the maps [layers, n, n].
    """
    was_training = model.training
    model.eval()
    device = model.get_input_embeddings().weight.device
    ids = torch.tensor([sample["input_ids"]], device=device)
    n = ids.shape[1]
    q = sample["q"]
    out = model(input_ids=ids, output_attentions=True, use_cache=False)
    attentions = out.attentions
    for a in attentions:
        assert a.requires_grad, "reference: attention probabilities do not require grad"
        a.retain_grad()
    logits_q = out.logits[0, q].float() if out.logits.dtype != torch.float64 else out.logits[0, q]
    if loss == "full_vocab":
        loss_v = F.cross_entropy(logits_q[None], torch.tensor([sample["target"]], device=device))
    else:
        gold = label_token_ids.index(sample["target"])
        loss_v = F.cross_entropy(logits_q[label_token_ids][None], torch.tensor([gold], device=device))
    loss_v.backward()

    drop_bos = exclude_bos and bos_token_id is not None and sample["input_ids"][0] == bos_token_id
    c_wp, c_pq, c_ww = pair_sets(n, q, sample["text"], sample["anchor"], sources, drop_bos)
    s_wp, s_pq, s_ww, maps = [], [], [], []
    for a in attentions:
        a64 = a.detach().double()
        g64 = a.grad.double()
        sal = (a64 * g64).sum(dim=1)[0].abs()  # [n, n]: sum over heads, then abs
        maps.append(sal)

        def mean(pairs, sal=sal):
            if not pairs:
                return math.nan
            return sum(float(sal[i, j]) for (i, j) in pairs) / len(pairs)

        s_wp.append(mean(c_wp))
        s_pq.append(mean(c_pq))
        s_ww.append(mean(c_ww))
    if normalize == "per_sample":
        for layer in range(len(s_ww)):
            vals = [s_wp[layer], s_pq[layer], s_ww[layer]]
            tot = sum(v for v in vals if not math.isnan(v))
            s_wp[layer], s_pq[layer], s_ww[layer] = [v / tot if not math.isnan(v) else v for v in vals]
    model.zero_grad(set_to_none=True)
    model.train(was_training)
    return (s_wp, s_pq, s_ww), (len(c_wp), len(c_pq), len(c_ww)), torch.stack(maps)
