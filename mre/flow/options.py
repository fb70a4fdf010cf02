"""The flow options, owned here and nowhere else.

`FlowOptions` says *what* is measured (the engine reads exactly these fields) and *how* it is
computed (`backend`, `block_size`: the same numbers by either route, so not part of `measurement()`);
the training callback (`flow:` in conf/config.yaml) and `analyze.py` (`flow:` in conf/analyze.yaml)
extend it with *how many* samples and where, so a new measurement option is one field here and
reaches the engine, the callback, the analysis, its resume check and both configs at once. The
attention knockout's options (`EdgeSet`, `KnockoutConfig`: `knockout:` of analyze.py) live here too:
the flow layer owns them and `mre.config` only assembles them.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from mre.setting import StrEnum


class Sources(StrEnum):
    """Source positions j of S_wp: the text (the definition) or every earlier position."""

    text = "text"
    all_prior = "all_prior"  # the "Label Words are Anchors" code


class FlowLoss(StrEnum):
    """The loss whose gradient is taken: over the vocabulary, or C-way over the TLI codes."""

    full_vocab = "full_vocab"
    label_restricted = "label_restricted"  # the "Label Words are Anchors" code (tli only)


class Normalize(StrEnum):
    """Rescaling of the three metrics to sum to 1 per layer: `per_sample`, each sample's three means
    before averaging over samples (a mean of ratios); `of_means`, the three means over samples after
    averaging (a ratio of means: the "Label Words are Anchors" plots). See docs/design.md."""

    none = "none"
    per_sample = "per_sample"  # by the engine: the per-sample values are shares
    of_means = "of_means"  # by the summary (`mre.flow.files.summarize`): per-sample values stay raw


class EdgeSet(StrEnum):
    """Attention edges an attention knockout blocks (`mre.flow.knockout`): `text_anchor`, the anchor
    positions reading the text; `anchor_q`, q reading the anchor; `anchor_after`, every position after
    the anchor up to q reading it (q and the template tokens between, which can relay the anchor to
    q around a blocked `anchor_q`)."""

    text_anchor = "text_anchor"
    anchor_q = "anchor_q"
    anchor_after = "anchor_after"


class Backend(StrEnum):
    """How the engine gets A * dL/dA: `eager` keeps every layer's L x L attention probabilities for the
    backward pass (memory layers x heads x L^2, and the only route to `keep_maps`); `blockwise` keeps
    q, k, v only and recomputes the probabilities a block of query rows at a time in the backward pass
    (memory linear in L per layer). Both give the same numbers (docs/design.md)."""

    eager = "eager"
    blockwise = "blockwise"


# a field with this metadata says how the metrics are computed, not what they are: results agree across
# its values, so `measurement()` (the identity of a result, e.g. the analysis resume check) leaves it out
_HOW = {"measurement": False}


@dataclass
class FlowOptions:
    """What the engine measures (docs/design.md, "Saliency and the three flow metrics")."""

    sources: Sources = Sources.text
    loss: FlowLoss = FlowLoss.full_vocab
    normalize: Normalize = Normalize.none
    exclude_bos: bool = False  # drop every pair whose source is a BOS (the first token, when it is one)
    backend: Backend = field(default=Backend.eager, metadata=_HOW)
    block_size: int = field(default=128, metadata=_HOW)  # query rows per block of the blockwise backend

    def measurement(self) -> dict[str, Any]:
        """The measurement fields only (no sample counts, no backend): equal dicts mean comparable numbers."""
        return {
            f.name: str(getattr(self, f.name))
            for f in fields(FlowOptions)
            if f.metadata.get("measurement", True)
        }


@dataclass
class FlowTrainConfig(FlowOptions):
    """`flow:` of train.py: the callback's fixed held-out sample, measured before training (epoch -1)
    and after every epoch."""

    enabled: bool = True
    n_samples: int = 64
    batch_size: int = 16
    n_boot: int = 1000  # bootstrap resamples of the per-layer 95% intervals


@dataclass
class FlowAnalysisConfig(FlowOptions):
    """`flow:` of analyze.py: a streamed, resumable pass over many test samples."""

    n_samples: int | None = 1000  # a seeded subset when the test split is larger; null: all
    batch_size: int = 8  # samples per engine pass; also the resume chunk (keep it when resuming)
    n_boot: int = 1000
    n_examples: int = 3  # token-level pictures of the first selected samples ...
    example_ids: list[str] = field(default_factory=list)  # ... or of these test ids
    example_layer: int | None = None  # null: saliency summed over layers
    by_group: bool = False  # also S_wp / S_pq per WLI type and anchor entity (mre.analysis.flow_groups)
    restart: bool = False  # discard a partial analysis made with other settings
    device: str = "auto"  # auto | cpu | cuda | cuda:1 ...
    progress: bool = True


@dataclass
class KnockoutConfig:
    """`knockout:` of analyze.py: setting `layers` on a run_dir (or model config) runs the attention
    knockout instead of the flow analysis (`mre.analysis.knockout_run`)."""

    # first:k | last:k | a-b | a list of those or of layer indices, e.g. [first:5,last:5]; null: no knockout
    layers: Any = None
    edges: list[EdgeSet] = field(default_factory=lambda: [EdgeSet.text_anchor, EdgeSet.anchor_q])
    n_samples: int | None = 200  # test samples (a seeded subset; null: all)
    batch_size: int = 8
    n_boot: int = 1000  # bootstrap resamples of each interval
    n_perm: int = 2000  # permutations of each paired F1 test
    max_new_tokens: int | None = None  # WLI generation budget; null: the run's eval.max_new_tokens
    device: str = "auto"
    progress: bool = True
    restart: bool = False  # discard a partial knockout_samples.csv made with other settings
