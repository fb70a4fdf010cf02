"""Attention-saliency information flow (docs/design.md, "Saliency and the three flow metrics").

For layer l, head h, with A_{h,l} the attention probabilities (after softmax, before dropout) and L the
cross-entropy of the gold target token at position q, the saliency matrix is

    I_l = | sum_h A_{h,l} * dL/dA_{h,l} |          (sum over heads, then abs)

and the three flow metrics are means of I_l over pair sets (T text, P anchor, q target position):

    S_wp: C_wp = {(p, j): p in P, j in T, j < p}          text -> anchor
    S_pq: C_pq = {(q, p): p in P}                         anchor -> target
    S_ww: every other pair (i, j), j < i <= q, both non-pad (the reference level)

How it is computed (one forward + one activation-only backward for the whole batch):

* A custom attention function is registered as ``"mre_flow"`` in transformers' ``AttentionInterface`` (and
  the eager 4D mask in ``AttentionMaskInterface``). It calls the model's *own* eager attention (the
  ``eager_attention_forward`` of the module's modeling file, so model-specific details such as GPT-2's
  default scaling stay exact), hooks the returned probabilities ``A`` (``register_hook`` gives dL/dA when
  the backward reaches that layer) and fetches ``A`` itself through a tiny autograd function saved with
  ``save_for_backward``, so that gradient checkpointing may drop and recompute it. The hook reduces
  ``A * dL/dA`` -> sum over heads -> abs -> three pair sums per sample (``mre.flow.pairs``: one float64
  prefix sum per row, each pair set being an interval of columns per row) into that layer's slot; the
  L x L map is then dropped. Only O(layers) numbers per sample survive (unless ``keep_maps``).
* ``backend="blockwise"`` (``FlowOptions.backend``; ``"eager"`` above is the default) registers
  ``"mre_flow_blockwise"`` instead: an autograd function (``mre.flow.blockwise``) that keeps only q, k, v
  and, in its backward, reruns the module's own eager attention on ``block_size`` query rows at a time
  to get that block's dQ, dK, dV, dL/dA and saliency sums, with a lazy mask that makes only those
  rows, over only the key columns they may attend to (the causal triangle is skipped). Nothing L x L is
  kept (memory linear in L per layer); the numbers are the eager backend's up to summation order.
  ``keep_maps`` needs the maps, so it needs the eager backend. Both backends share the pair sets and
  the reduction (``mre.flow.pairs``).
* The model is switched to the backend's implementation with ``set_attn_implementation`` and always
  switched back (also on exceptions), together with its ``training`` flags and every parameter's
  ``requires_grad``. Weights are frozen during the pass, so no weight gradient is ever allocated; the
  only leaf that requires grad is a detached copy of the input embeddings.
* The batch loss is the SUM over samples of each sample's cross-entropy at its own q, so each sample's
  gradient equals its single-sample gradient (samples do not interact in attention). Left padding is
  handled with ``position_ids = cumsum(attention_mask) - 1`` so a padded sample sees the same positions
  as the unpadded one.
* Gradient checkpointing: HF only checkpoints layers in training mode; the pass runs in eval mode (no
  dropout) but flips ``training`` on the checkpointing layer modules themselves (not their children, so
  dropout stays off) so a model that enabled checkpointing keeps its memory savings. The recomputed
  forward builds a throw-away graph whose hooks never fire; each layer's slot is filled exactly once per
  backward (checked: a second fill raises).

Departure options (not the docs/design.md default, offered because the "Label Words are Anchors" code or its
plots use them): ``sources="all_prior"`` (S_wp sources are all non-pad positions before p, anchor
positions included), ``loss="label_restricted"`` (C-way cross-entropy over the labels' first tokens),
``normalize="of_means"`` (their plots' ratio of means: the three means over samples rescaled to sum to
1 per layer, done by the summary, ``mre.flow.files.summarize``; the engine returns raw values for it)
or ``normalize="per_sample"`` (each sample's three means rescaled here, per layer: a mean of ratios once
averaged), ``exclude_bos`` (drop every pair whose source j is a BOS token, an attention sink: the first
non-pad token when it is the tokenizer's ``bos_token_id``; with a tokenizer that adds none, or has none,
nothing is dropped).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mre.errors import ConfigError
from mre.flow.attention import EAGER_HELP, eager_attention_for, hf_model, self_attending_mask, switched
from mre.flow.blockwise import BlockwiseAttention, BlockwiseLayer, mask_rows, row_mask
from mre.flow.options import Backend, FlowLoss, FlowOptions, Normalize, Sources
from mre.flow.pairs import PairSets, saliency

__all__ = ["BLOCKWISE_ATTN_IMPLEMENTATION", "FLOW_ATTN_IMPLEMENTATION", "FlowEngine", "FlowResult"]

log = logging.getLogger(__name__)

FLOW_ATTN_IMPLEMENTATION = "mre_flow"  # the eager backend
BLOCKWISE_ATTN_IMPLEMENTATION = "mre_flow_blockwise"
_IMPLEMENTATIONS = {Backend.eager: FLOW_ATTN_IMPLEMENTATION, Backend.blockwise: BLOCKWISE_ATTN_IMPLEMENTATION}

_KEEP_MAPS = (None, "layer", "head")


@dataclass
class FlowResult:
    """Per-sample, per-layer flow metrics. ``s_*`` are NaN exactly where the matching count is 0."""

    s_wp: Tensor  # [B, n_layers] float64: text -> anchor
    s_pq: Tensor  # [B, n_layers] float64: anchor -> target
    s_ww: Tensor  # [B, n_layers] float64: all other pairs
    n_wp: Tensor  # [B] long: |C_wp| (the same for every layer)
    n_pq: Tensor  # [B] long
    n_ww: Tensor  # [B] long
    maps: Tensor | None = None  # [B, n_layers, L, L] (keep_maps="layer") or [B, n_layers, H, L, L] ("head")

    @property
    def n_layers(self) -> int:
        return int(self.s_ww.shape[1])


# --------------------------------------------------------------------------------------------------
# the attention function registered in transformers
# --------------------------------------------------------------------------------------------------

_ACTIVE: _FlowState | None = None  # the pass in progress (set only inside FlowEngine.compute)
_COMPUTE_LOCK = threading.Lock()


class _FetchProbs(torch.autograd.Function):
    """Identity on the attention output that saves the probabilities for the backward.

    Its backward runs just before the backward of ``probs @ V`` (it sits downstream of it), and hands the
    saved probabilities to the hook on ``probs`` that fires right after. Saving through
    ``save_for_backward`` lets gradient checkpointing drop and recompute them like any activation.
    """

    @staticmethod
    def forward(ctx, out: Tensor, probs: Tensor, box: dict) -> Tensor:
        ctx.save_for_backward(probs)
        ctx.box = box
        return out.view_as(out)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        (probs,) = ctx.saved_tensors
        ctx.box["probs"] = probs
        return grad_out, None, None


def _flow_attention(module, query, key, value, attention_mask, **kwargs):
    kwargs["dropout"] = 0.0  # probabilities before dropout; the pass runs without dropout anyway
    out, probs = eager_attention_for(module)(module, query, key, value, attention_mask, **kwargs)
    state = _ACTIVE
    if state is None:
        return out, probs
    slot = state.slot_of(module)
    if probs is None or not (torch.is_grad_enabled() and probs.requires_grad):
        # e.g. the no-grad first forward of reentrant checkpointing: the taps come with the recomputation
        return out, probs
    box: dict = {}
    probs.register_hook(state.make_hook(slot, box))
    return _FetchProbs.apply(out, probs, box), probs


def _blockwise_attention(module, query, key, value, attention_mask, **kwargs):
    """The blockwise backend's attention function (`mre.flow.blockwise`): no probabilities returned or
    kept."""
    kwargs["dropout"] = 0.0  # probabilities before dropout, as the eager backend
    state = _ACTIVE
    if state is None:
        raise RuntimeError(f"{BLOCKWISE_ATTN_IMPLEMENTATION!r} attention runs only inside FlowEngine.compute")
    slot = state.slot_of(module)
    layer = BlockwiseLayer(
        eager=eager_attention_for(module),
        module=module,
        mask=mask_rows(attention_mask),
        kwargs=kwargs,
        block_size=state.block_size,
        pairs=state.pairs,
        store=functools.partial(state.store, slot),
    )
    if not (torch.is_grad_enabled() and any(t.requires_grad for t in (query, key, value))):
        # e.g. the no-grad first forward of reentrant checkpointing: the recomputation reduces
        return layer.output(query, key, value), None
    return BlockwiseAttention.apply(query, key, value, layer), None


def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(FLOW_ATTN_IMPLEMENTATION, _flow_attention)
    AttentionMaskInterface.register(FLOW_ATTN_IMPLEMENTATION, self_attending_mask)
    AttentionInterface.register(BLOCKWISE_ATTN_IMPLEMENTATION, _blockwise_attention)
    AttentionMaskInterface.register(BLOCKWISE_ATTN_IMPLEMENTATION, row_mask)


_register()


# --------------------------------------------------------------------------------------------------
# per-pass state
# --------------------------------------------------------------------------------------------------


class _FlowState:
    def __init__(self, pairs: PairSets, keep_maps: str | None, block_size: int):
        self.pairs = pairs
        self.seq = pairs.seq
        self.block_size = block_size  # query rows per block (blockwise backend)
        self.keep_maps = keep_maps
        self.slots: dict[int, int] = {}  # id(attention module) -> layer slot (order of first call)
        self.modules: list[nn.Module] = []
        self.in_backward = False
        self.forward_calls = 0
        self.sums: dict[int, Tensor] = {}  # slot -> [B, 3]
        self.maps: dict[int, Tensor] = {}
        self.fills: dict[int, int] = {}

    def slot_of(self, module: nn.Module) -> int:
        self.forward_calls += 1
        slot = self.slots.get(id(module))
        if slot is None:
            if self.in_backward:
                raise RuntimeError(
                    f"{type(module).__name__} ran attention for the first time during the backward pass; "
                    "cannot assign it a layer."
                )
            slot = len(self.slots)
            self.slots[id(module)] = slot
            self.modules.append(module)
        elif not self.in_backward:
            raise RuntimeError(
                f"attention module {type(module).__name__} (layer slot {slot}) ran twice in one forward "
                "pass; weight-shared attention layers are not supported by the flow engine."
            )
        return slot

    def make_hook(self, slot: int, box: dict):
        def hook(grad: Tensor) -> None:
            probs = box.pop("probs", None)
            if probs is None:  # cannot happen: _FetchProbs.backward always runs first
                raise RuntimeError(f"flow engine: attention probabilities of layer {slot} were not fetched")
            self._reduce(slot, probs, grad)

        return hook

    def store(self, slot: int, sums: Tensor) -> None:
        """A layer's [B, 3] pair sums, exactly once per backward."""
        if slot in self.sums:
            self.fills[slot] += 1
            raise RuntimeError(f"flow engine: saliency of layer slot {slot} filled twice in one backward")
        self.sums[slot] = sums
        self.fills[slot] = 1

    @torch.no_grad()
    def _reduce(self, slot: int, probs: Tensor, grad: Tensor) -> None:
        _, _, lq, lk = probs.shape
        if lq != lk or lq != self.seq:
            raise RuntimeError(
                f"flow engine: attention map of shape {tuple(probs.shape)} does not match the prompt length "
                f"{self.seq} (a cache or prefix must not be used)"
            )
        per_head, sal = saliency(probs, grad)  # [B, H, L, L], [B, L, L]
        self.store(slot, self.pairs.sums(sal, 0))
        if self.keep_maps == "layer":
            self.maps[slot] = sal
        elif self.keep_maps == "head":
            self.maps[slot] = per_head.abs_()


# --------------------------------------------------------------------------------------------------
# model switching (always restored)
# --------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _flow_mode(model: nn.Module, implementation: str) -> Iterator[None]:
    """The attention switch (`mre.flow.attention.switched`: eval mode, the flow's attention
    `implementation`) with frozen weights; everything restored exactly afterwards."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    peft_cfg = getattr(model, "active_peft_config", None)
    if peft_cfg is not None and getattr(peft_cfg, "is_prompt_learning", False):
        raise ConfigError(
            "flow engine: prompt-learning PEFT adapters prepend virtual tokens and shift every position; "
            "only weight adapters such as LoRA are supported."
        )
    grads_before = [(p, p.requires_grad) for p in model.parameters()]
    with switched(model, implementation):
        try:
            for p, _ in grads_before:
                p.requires_grad_(False)
            # keep gradient checkpointing working in eval mode (HF only checkpoints layers in training
            # mode): flag the checkpointing layers themselves, not their children, so dropout stays off
            for m in model.modules():
                if isinstance(m, GradientCheckpointingLayer) and getattr(m, "gradient_checkpointing", False):
                    m.training = True
            yield
        finally:
            for p, flag in grads_before:
                p.requires_grad_(flag)


def _choice(name: str, value: Any, enum: type) -> Any:
    try:
        return enum(str(value))
    except ValueError:
        raise ConfigError(f"FlowEngine: {name}={value!r} is not one of {[e.value for e in enum]}") from None


def _supports_logits_to_keep(hf: nn.Module) -> bool:
    try:
        return "logits_to_keep" in inspect.signature(hf.forward).parameters
    except (TypeError, ValueError):
        return False


# --------------------------------------------------------------------------------------------------
# the engine
# --------------------------------------------------------------------------------------------------


class FlowEngine:
    """Per-layer saliency flow metrics (S_wp, S_pq, S_ww) for a batch of left-padded prompts.

    Args:
        model: a Hugging Face causal LM (LLaMA, Qwen2, Mistral, GPT-2, ...), optionally PEFT-wrapped (LoRA),
            quantized (bitsandbytes) or with gradient checkpointing enabled. Its state (attention
            implementation, train/eval flags, requires_grad flags) is restored after every ``compute``.
        options: what is measured (``mre.flow.options.FlowOptions``): ``sources`` "text" (the definition)
            or "all_prior" (every non-pad position before the anchor token, as in the "Label Words are
            Anchors" code); ``loss`` "full_vocab" or "label_restricted" (C-way cross-entropy over
            ``batch["label_token_ids"]``, the labels' first tokens); ``normalize`` "none", "per_sample"
            (the three means rescaled to sum to 1 per layer and sample) or "of_means" (left to the
            summary, which rescales the means over samples: raw values here); ``exclude_bos`` (drop every
            pair whose source is a BOS: the first non-pad token when it equals ``bos_token_id``).
        keep_maps: None, "layer" (return the I_l maps, [B, n_layers, L, L]) or "head" (|A * dL/dA| per
            head, [B, n_layers, H, L, L]) for heatmaps; this keeps all layers' maps in memory.
        bos_token_id: the tokenizer's BOS id, which ``exclude_bos`` needs: a prompt whose first token is
            not a BOS (a GPT-2 style tokenizer adds none; a chat template may start otherwise) starts
            with an instruction token, which is measured like any other. None: nothing is dropped.
    """

    def __init__(
        self,
        model: nn.Module,
        options: FlowOptions | None = None,
        keep_maps: str | None = None,
        bos_token_id: int | None = None,
    ):
        options = options or FlowOptions()
        self.model = model
        self.sources = _choice("sources", options.sources, Sources)
        self.loss = _choice("loss", options.loss, FlowLoss)
        self.normalize = _choice("normalize", options.normalize, Normalize)
        self.exclude_bos = bool(options.exclude_bos)
        self.bos_token_id = bos_token_id
        if self.exclude_bos and bos_token_id is None:
            log.warning("flow.exclude_bos: the tokenizer has no BOS token, so no pair is excluded")
        if keep_maps not in _KEEP_MAPS:
            raise ConfigError(f"FlowEngine: keep_maps={keep_maps!r} is not one of {_KEEP_MAPS}")
        self.keep_maps = keep_maps
        self.backend = _choice("backend", options.backend, Backend)
        if self.backend == Backend.blockwise and keep_maps is not None:
            raise ConfigError(
                f"FlowEngine: keep_maps={keep_maps!r} returns the L x L saliency maps, which the blockwise "
                "backend never holds; use flow.backend=eager for maps"
            )
        self.block_size = int(options.block_size)
        if self.block_size < 1:
            raise ConfigError(
                f"FlowEngine: flow.block_size must be a positive number of query rows, got {self.block_size}"
            )
        self.last_stats: dict[str, Any] = {}  # diagnostics of the last pass (tests, debugging)

    # ---------------------------------------------------------------------------------------------
    def compute(self, batch: dict[str, Tensor]) -> FlowResult:
        # Lightning runs validation under inference_mode: leave it, and clone the batch there (tensors made
        # under inference mode cannot take part in autograd)
        with _COMPUTE_LOCK, torch.inference_mode(False), torch.enable_grad():
            batch = {k: (v.clone() if isinstance(v, Tensor) else v) for k, v in batch.items()}
            return self._compute(batch)

    def _compute(self, batch: dict[str, Tensor]) -> FlowResult:
        global _ACTIVE
        for k in ("input_ids", "attention_mask", "text_range", "anchor_range", "q", "target"):
            if k not in batch:
                raise ValueError(f"FlowEngine: batch has no {k!r}")
        input_ids = batch["input_ids"].long()
        if input_ids.ndim != 2:
            raise ValueError(f"FlowEngine: input_ids must be [B, L], got shape {tuple(input_ids.shape)}")
        bsz, seq = input_ids.shape
        mask = batch["attention_mask"].reshape(bsz, seq) != 0
        q = batch["q"].reshape(-1).long()
        target = batch["target"].reshape(-1).long()
        text_range = batch["text_range"].reshape(bsz, 2).long()
        anchor_range = batch["anchor_range"].reshape(bsz, 2).long()
        if q.numel() != bsz or target.numel() != bsz:
            raise ValueError(f"FlowEngine: q and target need one entry per sample (B={bsz})")
        label_ids = batch.get("label_token_ids")
        gold = self._gold_index(target, label_ids)
        self._validate(mask.cpu(), q.cpu(), text_range.cpu(), anchor_range.cpu())

        model = self.model
        hf = hf_model(model)
        emb_layer = model.get_input_embeddings()
        if emb_layer is None:
            raise RuntimeError("FlowEngine: the model has no input embeddings (get_input_embeddings())")
        device = emb_layer.weight.device
        input_ids, mask_d = input_ids.to(device), mask.to(device)
        q_d, gold_d = q.to(device), gold.to(device)
        pairs = PairSets(
            valid=mask_d,
            q=q_d,
            text=text_range.to(device),
            anchor=anchor_range.to(device),
            sink=self._bos_position(input_ids, mask_d),
            all_prior=self.sources == Sources.all_prior,
        )
        counts = pairs.counts(self.block_size if self.backend == Backend.blockwise else seq).cpu()
        for b in range(bsz):
            a0, a1 = anchor_range[b].tolist()
            if a1 > a0 and counts[b, 0] == 0:
                why = "no text position precedes the anchor" if self.sources == "text" else "no source"
                raise ValueError(
                    f"FlowEngine: sample {b}: the text->anchor pair set C_wp is empty ({why}; "
                    f"text={text_range[b].tolist()}, anchor=[{a0}, {a1}), exclude_bos={self.exclude_bos})"
                )

        position_ids = (mask_d.long().cumsum(-1) - 1).clamp_(min=0)
        state = _FlowState(pairs, self.keep_maps, self.block_size)

        with _flow_mode(model, _IMPLEMENTATIONS[self.backend]):
            _ACTIVE = state
            try:
                embeds = emb_layer(input_ids).detach().requires_grad_(True)
                kwargs: dict[str, Any] = {
                    "inputs_embeds": embeds,
                    "attention_mask": mask_d.long(),
                    "position_ids": position_ids,
                    "use_cache": False,
                }
                if _supports_logits_to_keep(hf):
                    kwargs["logits_to_keep"] = q_d.view(bsz, 1)  # logits at q only
                logits = model(**kwargs).logits
                if logits.shape[1] == 1 and "logits_to_keep" in kwargs:
                    logits_q = logits[:, 0]
                else:
                    logits_q = logits[torch.arange(bsz, device=logits.device), q_d.to(logits.device)]
                if not state.slots:
                    raise RuntimeError(
                        f"{EAGER_HELP}, but {type(hf).__name__} never called it (its attention does not "
                        "dispatch through AttentionInterface)."
                    )
                loss = self._loss(logits_q, gold_d.to(logits_q.device), label_ids)
                state.in_backward = True
                loss.backward()
            finally:
                _ACTIVE = None

        n_layers = len(state.slots)
        missing = [s for s in range(n_layers) if s not in state.sums]
        if missing:
            raise RuntimeError(
                f"flow engine: no saliency reached layer slots {missing} (their attention probabilities got "
                "no gradient; is the model's output detached from them?)"
            )
        self.last_stats = {
            "n_layers": n_layers,
            "fills": [state.fills[s] for s in range(n_layers)],
            "attention_calls": state.forward_calls,
            "layer_modules": [type(m).__name__ for m in state.modules],
        }
        sums = torch.stack([state.sums[s] for s in range(n_layers)], dim=1).double().cpu()  # [B, nl, 3]
        n = counts.double()[:, None, :]  # [B, 1, 3]
        means = torch.where(n > 0, sums / n.clamp(min=1), torch.full_like(sums, float("nan")))
        if self.normalize == Normalize.per_sample:
            total = means.nan_to_num(0.0).sum(-1, keepdim=True)
            means = torch.where(
                torch.isnan(means), means, torch.where(total > 0, means / total, torch.zeros_like(means))
            )
        maps = None
        if self.keep_maps is not None:
            maps = torch.stack([state.maps[s] for s in range(n_layers)], dim=1)
        return FlowResult(
            s_wp=means[..., 0],
            s_pq=means[..., 1],
            s_ww=means[..., 2],
            n_wp=counts[:, 0].clone(),
            n_pq=counts[:, 1].clone(),
            n_ww=counts[:, 2].clone(),
            maps=maps,
        )

    # ---------------------------------------------------------------------------------------------
    def _gold_index(self, target: Tensor, label_ids: Tensor | None) -> Tensor:
        if self.loss == "full_vocab":
            return target
        if label_ids is None:
            raise ValueError("FlowEngine: loss='label_restricted' needs batch['label_token_ids']")
        label_ids = label_ids.reshape(-1).long().cpu()
        gold = []
        for b, t in enumerate(target.tolist()):
            hits = (label_ids == t).nonzero().flatten().tolist()
            if not hits:
                raise ValueError(
                    f"FlowEngine: sample {b}: target token {t} is not among label_token_ids "
                    f"{label_ids.tolist()} (loss='label_restricted')"
                )
            gold.append(hits[0])
        return torch.tensor(gold, dtype=torch.long)

    def _loss(self, logits_q: Tensor, gold: Tensor, label_ids: Tensor | None) -> Tensor:
        acc = torch.promote_types(logits_q.dtype, torch.float32)
        if self.loss == "label_restricted":
            logits_q = logits_q[:, label_ids.reshape(-1).long().to(logits_q.device)]
        vocab = logits_q.shape[-1]
        bad = ((gold < 0) | (gold >= vocab)).nonzero().flatten().tolist()
        if bad:
            b = bad[0]
            raise ValueError(
                f"FlowEngine: sample {b}: target {int(gold[b])} is outside the vocabulary ({vocab})"
            )
        # SUM over samples: each sample's gradient is its own single-sample gradient
        return F.cross_entropy(logits_q.to(acc), gold, reduction="sum")

    def _validate(self, mask: Tensor, q: Tensor, text_range: Tensor, anchor_range: Tensor) -> None:
        bsz, seq = mask.shape
        for b in range(bsz):
            qb = int(q[b])
            if not 0 <= qb < seq:
                raise ValueError(
                    f"FlowEngine: sample {b}: target position q={qb} is beyond the sequence (L={seq})"
                )
            if not mask[b, qb]:
                raise ValueError(
                    f"FlowEngine: sample {b}: q={qb} is not attended (attention_mask is 0 there)"
                )
            first = int(mask[b].nonzero()[0])
            t0, t1 = text_range[b].tolist()
            a0, a1 = anchor_range[b].tolist()
            if t1 <= t0:
                raise ValueError(f"FlowEngine: sample {b}: empty text range [{t0}, {t1})")
            if t0 < 0 or t1 > qb + 1 or not bool(mask[b, t0:t1].all()):
                raise ValueError(
                    f"FlowEngine: sample {b}: text range [{t0}, {t1}) must lie on non-pad positions up to "
                    f"q={qb}"
                )
            if a1 < a0:
                raise ValueError(f"FlowEngine: sample {b}: anchor range [{a0}, {a1}) has end < start")
            if a1 == a0:
                continue  # no anchor: s_wp / s_pq are NaN with n_wp = n_pq = 0
            if a0 < first:
                raise ValueError(
                    f"FlowEngine: sample {b}: anchor range [{a0}, {a1}) starts on padding (first non-pad "
                    f"position: {first})"
                )
            if a0 == first:
                raise ValueError(
                    f"FlowEngine: sample {b}: the anchor starts at position {a0}, the first non-pad position "
                    f"is {first}: nothing precedes the anchor (no text before it)"
                )
            if a1 > qb or not bool(mask[b, a0:a1].all()):
                raise ValueError(
                    f"FlowEngine: sample {b}: anchor range [{a0}, {a1}) must lie on non-pad positions before "
                    f"q={qb}"
                )
            if a0 < t1 and t0 < a1:
                raise ValueError(f"FlowEngine: sample {b}: text [{t0}, {t1}) and anchor [{a0}, {a1}) overlap")

    def _bos_position(self, input_ids: Tensor, mask: Tensor) -> Tensor:
        """[B] the position whose pairs `exclude_bos` drops: the first non-pad token where it is the BOS,
        else -1 (none), so an instruction token is never mistaken for an attention sink."""
        first = mask.long().argmax(dim=1)
        if not self.exclude_bos or self.bos_token_id is None:
            return torch.full_like(first, -1)
        is_bos = input_ids.gather(1, first.view(-1, 1)).view(-1) == self.bos_token_id
        return torch.where(is_bos, first, torch.full_like(first, -1))
