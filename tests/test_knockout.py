"""Attention knockout (mre.flow.knockout) on tiny random models: which edges are blocked, in which
layers, that nothing else changes, and the random controls. The run-level command (analyze.py
run_dir=... knockout.layers=...) is tested on a trained run in tests/test_analyze.py."""

from __future__ import annotations

import pytest
import torch

from mre.flow.knockout import (
    KnockoutError,
    edge_masks,
    knockout,
    parse_layers,
    random_edges,
    receiver_matched_edges,
    receiver_pools,
)
from mre.flow.options import EdgeSet
from tests.flow_models import VOCAB, collate, make_samples, tiny_gemma3, tiny_gpt2, tiny_llama, tiny_mistral

pytestmark = pytest.mark.usefixtures("one_thread")


def _batch(seed: int = 3) -> dict[str, torch.Tensor]:
    return collate(make_samples(4, seed=seed), extra_pad=2)


def _forward(model, batch, **kw):
    return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], **kw)


def _sets(batch):
    return edge_masks(batch["attention_mask"] != 0, batch["q"], batch["text_range"], batch["anchor_range"])


def test_parse_layers():
    assert parse_layers("first:2", 5) == [0, 1]
    assert parse_layers("last:2", 5) == [3, 4]
    assert parse_layers("1-3", 5) == [1, 2, 3]
    assert parse_layers([4, 0, 4], 5) == [0, 4]
    assert parse_layers(2, 5) == [2]
    for bad, msg in (
        ("first:0", "k must be in 1..5"),
        ("last:6", "k must be in 1..5"),
        ("3-7", "outside 0..4"),
        ([5], "outside 0..4"),
        ("middle", "expected first:k, last:k, a-b"),
    ):
        with pytest.raises(KnockoutError, match=msg):
            parse_layers(bad, 5)


def test_edge_sets_are_the_named_pairs():
    batch = _batch()
    sets, pool = _sets(batch)
    for b in range(batch["q"].shape[0]):
        (t0, t1), (a0, a1) = batch["text_range"][b].tolist(), batch["anchor_range"][b].tolist()
        q = int(batch["q"][b])
        ta = {(i, j) for i in range(a0, a1) for j in range(t0, t1) if j < i}
        aq = {(q, j) for j in range(a0, a1)}
        after = {(i, j) for i in range(a1, q + 1) for j in range(a0, a1)}
        assert len(after) > len(aq)  # tokens sit between the anchor and q
        assert set(map(tuple, sets[EdgeSet.text_anchor][b].nonzero().tolist())) == ta
        assert set(map(tuple, sets[EdgeSet.anchor_q][b].nonzero().tolist())) == aq
        assert set(map(tuple, sets[EdgeSet.anchor_after][b].nonzero().tolist())) == after
        pairs = set(map(tuple, pool[b].nonzero().tolist()))
        pad = int((batch["attention_mask"][b] == 0).sum())
        assert not pairs & (ta | after)
        assert all(pad <= j < i <= q for i, j in pairs)  # causal, off the diagonal, no padding


def test_random_edges_are_seeded_draws_from_the_pool():
    batch = _batch()
    sets, pool = _sets(batch)
    counts = sets[EdgeSet.text_anchor].flatten(1).sum(1)
    a = random_edges(pool, counts, torch.Generator().manual_seed(1))
    b = random_edges(pool, counts, torch.Generator().manual_seed(1))
    c = random_edges(pool, counts, torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(a.flatten(1).sum(1), torch.minimum(counts, pool.flatten(1).sum(1)))
    assert not (a & ~pool).any()
    huge = random_edges(pool, counts * 0 + 10**6, torch.Generator().manual_seed(1))
    assert torch.equal(huge, pool)  # a pool smaller than the count: all of it


def _pairs(edges: torch.Tensor) -> set[tuple[int, int]]:
    return set(map(tuple, edges.nonzero().tolist()))


@pytest.mark.parametrize("edges", list(EdgeSet))
def test_receiver_matched_control_blocks_only_the_sets_own_rows(edges):
    """The same rows with as many edges each, from sources outside the set's span (not the anchor,
    resp. not the text): unlike the uniform control, q's own row for anchor_q."""
    batch = _batch()
    mask = batch["attention_mask"] != 0
    spans = (batch["q"], batch["text_range"], batch["anchor_range"])
    sets, pool = edge_masks(mask, *spans)
    rows = receiver_pools(sets, mask, *spans)
    block = sets[edges]
    got = receiver_matched_edges(block, rows[edges], torch.Generator().manual_seed(1))
    assert torch.equal(got, receiver_matched_edges(block, rows[edges], torch.Generator().manual_seed(1)))
    for b in range(block.shape[0]):
        span = batch["text_range" if edges is EdgeSet.text_anchor else "anchor_range"][b].tolist()
        pad, q = int((~mask[b]).sum()), int(batch["q"][b])
        drawn = _pairs(got[b])
        assert drawn and not drawn & _pairs(block[b])
        assert all(pad <= j < i <= q and not span[0] <= j < span[1] for i, j in drawn)  # causal, outside
        for i in range(block.shape[1]):  # row by row: as many as the set blocks, or every other source
            others = sum(1 for j in range(pad, i) if not span[0] <= j < span[1])
            assert int(got[b, i].sum()) == min(int(block[b, i].sum()), others), (b, i)
    if edges is EdgeSet.anchor_q:  # every drawn edge is q's; the uniform control lands elsewhere
        rows_of = got.nonzero()[:, :2]
        assert all(int(i) == int(batch["q"][b]) for b, i in rows_of.tolist())
        uniform = random_edges(pool, block.flatten(1).sum(1), torch.Generator().manual_seed(1))
        q_rows = uniform[torch.arange(block.shape[0]), batch["q"]].sum()
        assert q_rows < uniform.sum()


@pytest.mark.parametrize(
    "make", [tiny_llama, tiny_mistral, tiny_gpt2, tiny_gemma3], ids=["llama", "mistral", "gpt2", "gemma3"]
)
def test_blocked_edges_get_zero_attention_in_the_listed_layers_only(make):
    """With output_attentions the attention function's own probabilities come back: blocked edges are
    exactly 0 in the knocked-out layers (each row renormalised over the rest), untouched elsewhere."""
    model = make(seed=1)
    batch = _batch()
    sets, _ = _sets(batch)
    block = sets[EdgeSet.text_anchor] | sets[EdgeSet.anchor_q]
    with knockout(model, None, []):
        base = _forward(model, batch, output_attentions=True).attentions
    with knockout(model, block, [0, 2]):
        out = _forward(model, batch, output_attentions=True).attentions
    real = batch["attention_mask"].bool()
    rows = real[:, None, :, None].expand_as(out[0])  # the rows of real tokens
    heads = block[:, None].expand_as(out[0])
    for layer, (a, k) in enumerate(zip(base, out, strict=True)):
        if layer in (0, 2):
            assert (k[heads] == 0).all() and (a[heads] > 0).any()
            sums = k.sum(-1)[rows[..., 0]]
            assert torch.allclose(sums, torch.ones_like(sums), atol=1e-6)
        else:  # an untouched layer after a knocked-out one: its inputs moved, its mask did not
            assert torch.equal(k[heads] > 0, a[heads] > 0)  # 0 only outside a sliding window
    # layer 0 sees the same inputs: a knockout there renormalises each row over the edges left
    kept = base[0].masked_fill(heads, 0.0)
    want = kept / kept.sum(-1, keepdim=True)
    assert torch.allclose(out[0][rows], want[rows], rtol=1e-5, atol=1e-7)


def test_no_block_is_the_eager_model():
    """The baseline of every comparison: no edge blocked = the model's own eager attention, bit for bit
    on real tokens (only fully padded rows may differ: they attend to themselves). float32: in float64
    the eager mask leaves padded rows empty, and their NaN reaches every row through 0 * NaN."""
    model = tiny_llama(seed=2).float()
    batch = _batch(seed=5)
    model.config._attn_implementation = "eager"
    model.eval()
    want = _forward(model, batch).logits
    with knockout(model, None, [0, 1, 2]):
        got = _forward(model, batch).logits
    real = batch["attention_mask"].bool()
    assert torch.equal(got[real], want[real])
    assert model.config._attn_implementation == "eager"


def test_effects_reach_q_only_through_the_blocked_edges():
    """Blocking the anchor reading the text in the LAST layer cannot change q's logits (no later layer
    carries the anchor's output to q); in the first layer it must."""
    model = tiny_llama(seed=3)
    batch = _batch(seed=7)
    sets, _ = _sets(batch)
    block = sets[EdgeSet.text_anchor]
    assert block.flatten(1).any(1).all()
    q = batch["q"]
    rows = torch.arange(q.shape[0])
    with knockout(model, None, []):
        base = _forward(model, batch).logits[rows, q]
    with knockout(model, block, [2]):
        last = _forward(model, batch).logits[rows, q]
    with knockout(model, block, [0]):
        first = _forward(model, batch).logits[rows, q]
    assert torch.equal(last, base)
    assert ((first - base).abs().amax(-1) > 1e-6).all()


def test_only_anchor_after_cuts_every_path_from_the_anchor_to_q():
    """With `anchor_after` blocked in every layer nothing after the anchor reads it, so q's logits do
    not depend on the anchor's tokens at all (exactly: blocked weights are exact zeros). Blocking
    only `anchor_q` leaves the relay through the tokens between the anchor and q."""
    model = tiny_llama(seed=4)
    batch = _batch(seed=9)
    other = dict(batch, input_ids=batch["input_ids"].clone())
    for b, (a0, a1) in enumerate(batch["anchor_range"].tolist()):
        other["input_ids"][b, a0:a1] = (batch["input_ids"][b, a0:a1] + 1) % (VOCAB - 1) + 1  # other tokens
    sets, _ = _sets(batch)
    every = list(range(model.config.num_hidden_layers))
    rows, q = torch.arange(batch["q"].shape[0]), batch["q"]

    def at_q(edges: EdgeSet, inputs: dict) -> torch.Tensor:
        with knockout(model, sets[edges], every):
            return _forward(model, inputs).logits[rows, q]

    assert torch.equal(at_q(EdgeSet.anchor_after, batch), at_q(EdgeSet.anchor_after, other))
    relayed = (at_q(EdgeSet.anchor_q, batch) - at_q(EdgeSet.anchor_q, other)).abs().amax(-1)
    assert (relayed > 1e-6).all()


def test_knockout_restores_the_model():
    model = tiny_llama(seed=4, attn="sdpa")
    model.train()
    with pytest.raises(RuntimeError, match="inside"), knockout(model, None, [0]):
        assert not model.training
        raise RuntimeError("inside")
    assert model.training and model.config._attn_implementation == "sdpa"
