"""Resolve a model name to a local folder without touching the network.

These machines reach no model hub. A hub id is accepted only when its snapshot is already in the
local Hugging Face cache; anything else fails at once with instructions (transformers would
otherwise spend tens of seconds retrying HTTP requests before failing).
"""

from __future__ import annotations

from pathlib import Path

from huggingface_hub import try_to_load_from_cache

HOW_TO = (
    "no model hub is reachable here. Download the weights elsewhere (e.g. `hf download "
    "meta-llama/Llama-2-7b-chat-hf`), copy the folder to this machine and set "
    "model.pretrained_path=/path/to/folder (or MRE_LLAMA_PATH)."
)


class NotLocalError(FileNotFoundError):
    """A model or tokenizer name is neither a local folder nor in the local cache."""


def local_path(name_or_path: str) -> str:
    """A local folder for `name_or_path`: the folder itself, or the cached hub snapshot."""
    if Path(name_or_path).exists():
        return name_or_path
    cached = try_to_load_from_cache(name_or_path, "config.json")
    if isinstance(cached, str):
        return str(Path(cached).parent)
    raise NotLocalError(
        f"{name_or_path!r} is not a local folder nor in the local Hugging Face cache, and {HOW_TO}"
    )
