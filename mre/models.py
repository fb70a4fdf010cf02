"""Model construction for every model config: tiny random-weight architectures, real local weights,
LoRA adapters (peft) and 4/8-bit quantization (bitsandbytes).

Tiny models are built from a small config of the real architecture (`transformers` model_type),
sized to the run's trained tokenizer. A tiny model that is to be quantized is first saved and then
loaded back through `from_pretrained`, because bitsandbytes quantizes on load: this is the same code
path a real QLoRA run takes, only smaller.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSeq2SeqLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from mre.errors import UserError
from mre.hub import WeightsError, model_folder
from mre.model_options import DType, LoraConfig, ModelConfig, ModelKind, Quantization

log = logging.getLogger(__name__)

# the torch dtype of each `DType` (named alike); keyed by the enum, whose string value finds it too
DTYPES: dict[DType, torch.dtype] = {d: getattr(torch, d.value) for d in DType}


class ModelLoadError(UserError, RuntimeError):
    """A model cannot be built or loaded from its config."""


def _plain(x: Any) -> Any:
    return OmegaConf.to_container(x, resolve=True) if isinstance(x, DictConfig) else x


def tiny_config(arch: str, tiny: dict[str, Any], tokenizer: PreTrainedTokenizerBase, seed: int = 0):
    """A transformers config of architecture `arch` sized to the tokenizer."""
    specials = {
        "vocab_size": len(tokenizer),
        "pad_token_id": tokenizer.pad_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "bos_token_id": tokenizer.bos_token_id,
    }
    if arch == "t5":
        specials["decoder_start_token_id"] = tokenizer.pad_token_id
    return AutoConfig.for_model(arch, **_plain(tiny), **specials)


def check_model_config(cfg: ModelConfig) -> None:
    """Fail at start-up, before any work, when a tiny model's architecture is not a transformers
    model_type (with the closest names), rather than deep inside the model build."""
    if cfg.kind is not ModelKind.tiny:
        return
    from transformers import CONFIG_MAPPING

    if cfg.arch not in CONFIG_MAPPING:
        close = difflib.get_close_matches(str(cfg.arch), list(CONFIG_MAPPING.keys()), n=5)
        raise ModelLoadError(
            f"model.arch={cfg.arch!r} is not a transformers model_type; did you mean one of {close}? "
            "(all of them: transformers.CONFIG_MAPPING)"
        )


def is_encoder_decoder(cfg: ModelConfig, cache_dir: str | None = None) -> bool:
    """Whether a model config makes an encoder-decoder (T5) rather than a decoder-only LM, from its
    architecture (tiny) or its folder's config.json (pretrained), without building it."""
    if cfg.kind is ModelKind.tiny:
        config = AutoConfig.for_model(cfg.arch)
    else:
        try:
            config = AutoConfig.from_pretrained(model_folder(cfg, cache_dir))
        except WeightsError as e:
            raise ModelLoadError(str(e)) from e
    return bool(getattr(config, "is_encoder_decoder", False))


def _quantization(kind: Quantization | None, dtype: torch.dtype):  # type: ignore[valid-type]
    """The bitsandbytes config of `model.quantization` (bitsandbytes is imported only here)."""
    if kind is None:
        return None
    from transformers import BitsAndBytesConfig

    if Quantization(kind) is Quantization["4bit"]:
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_compute_dtype=dtype,
            bnb_4bit_use_double_quant=True,
        )
    return BitsAndBytesConfig(load_in_8bit=True)


def _auto_class(arch_or_config) -> type:
    return (
        AutoModelForSeq2SeqLM
        if getattr(arch_or_config, "is_encoder_decoder", False)
        else AutoModelForCausalLM
    )


def _tiny_checkpoint(
    cfg: ModelConfig, tokenizer: PreTrainedTokenizerBase, seed: int, cache_dir: str | None
) -> Path:
    """Save the seeded random tiny model once (keyed by config + tokenizer) so it can be quantized on load."""
    config = tiny_config(cfg.arch, cfg.tiny, tokenizer)
    key = hashlib.sha256(
        json.dumps([config.to_dict(), seed], sort_keys=True, default=str).encode()
    ).hexdigest()[:16]
    root = Path(cache_dir or os.environ.get("MRE_CACHE", Path.home() / ".cache" / "mre-flow"))
    path = root / "tiny-models" / f"{cfg.arch}-{key}"
    if not (path / "config.json").exists():
        torch.manual_seed(seed)
        _auto_class(config).from_config(config).save_pretrained(path)
    return path


def _from_pretrained(folder: Path, **kw: Any) -> PreTrainedModel:
    """Weights from a local folder with the Auto class its config names; a broken file names the folder."""
    try:
        return _auto_class(AutoConfig.from_pretrained(folder)).from_pretrained(folder, **kw)
    except Exception as e:  # safetensors, torch and transformers each raise their own types for a bad file
        raise ModelLoadError(
            f"cannot load the model in {folder} ({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
            "expected a complete save_pretrained folder (config.json and readable *.safetensors or *.bin)"
        ) from e


def build_model(
    cfg: ModelConfig, tokenizer: PreTrainedTokenizerBase, seed: int = 0, cache_dir: str | None = None
) -> PreTrainedModel:
    """The model of a model config, with LoRA and quantization applied as configured."""
    dtype = DTYPES[cfg.dtype]
    quant = _quantization(cfg.quantization, dtype)
    tiny = cfg.kind is ModelKind.tiny
    if tiny and quant is None:
        config = tiny_config(cfg.arch, cfg.tiny, tokenizer)
        torch.manual_seed(seed)
        model = _auto_class(config).from_config(config, dtype=dtype)
    else:
        try:
            if tiny:
                folder = _tiny_checkpoint(cfg, tokenizer, seed, cache_dir)
            else:
                folder = model_folder(cfg, cache_dir)
        except WeightsError as e:
            raise ModelLoadError(str(e)) from e
        model = _from_pretrained(folder, dtype=dtype, quantization_config=quant)
    if model.get_input_embeddings().num_embeddings < len(tokenizer):
        model.resize_token_embeddings(len(tokenizer))
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if quant is not None:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.gradient_checkpointing)
    if cfg.lora is not None:
        model = _add_lora(model, cfg.lora, quantized=quant is not None)
    return model


def quiet_bitsandbytes() -> None:
    """peft imports bitsandbytes whenever it is installed, and bitsandbytes then warns about CPU kernels
    it could not fetch: irrelevant unless the model is quantized, so it is silenced for LoRA alone."""
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)


def _add_lora(model: PreTrainedModel, lora: LoraConfig, quantized: bool):
    if not quantized:
        quiet_bitsandbytes()
    from peft import LoraConfig as PeftLoraConfig
    from peft import TaskType, get_peft_model

    task = TaskType.SEQ_2_SEQ_LM if model.config.is_encoder_decoder else TaskType.CAUSAL_LM
    config = PeftLoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=list(lora.target_modules),
        task_type=task,
    )
    return get_peft_model(model, config)


def save_for_tools(model, tokenizer: PreTrainedTokenizerBase, path: str | Path) -> Path:
    """`save_pretrained` layout for analyze.py and other tools: adapters only for LoRA models."""
    path = Path(path)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
