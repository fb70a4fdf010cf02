"""The paper's data sets from the Hugging Face hub: the MMM collection (CC BY-NC 4.0), one training and one
test repository, each holding every set of Japanese, English and Chinese in the OIELLM format
(`source: mmm`, see mre/data/readers.py).

`mmm_files(lang, task)` finds a set's two files by listing the repositories and matching the names by
language code and task index (`Train_En_0_SCNM_dataset.json`, `test_Ch_5_TCREE_2k_clear2.json`): the
names follow no single pattern (the Japanese ones carry sizes, `Train_Ja_0_SCNM_5343.json`; Chinese is
`Ch`, and `Cn` in the test OIE file), so they are matched, never built. Each is downloaded once into the
Hugging Face cache (`hf_hub_download`), and the cache comes first: a set fetched before is read with no
network at all. When a file is not cached and the hub cannot be reached (HF_HUB_OFFLINE, no network),
one short metadata request without retries (`mre.hub.hub_status`, the weights' policy) decides within
seconds, and the error names the repositories, the files to fetch and `dataset.path`.

An interrupted download leaves nothing that a later call would read as whole: huggingface_hub writes
into an `.incomplete` file and links the snapshot file only once the size matches
(tests/test_hub_data.py shows it against a local server).
"""

from __future__ import annotations

import fnmatch
import logging
import re
from dataclasses import dataclass
from pathlib import Path

from mre.data.options import DatasetConfig, MMMLanguage, MMMTask, Source
from mre.data.readers import load_source
from mre.data.record import DataFormatError, Record
from mre.data.wli_format import WLIFormat
from mre.hub import cached_snapshot, hub_status

log = logging.getLogger(__name__)

REPOS = {"train": "ganchengguang/MMM-dataset-Trainset", "test": "ganchengguang/MMM-datasets-Testset"}
LICENCE = "CC BY-NC 4.0"

_PREFIX = {"train": "Train", "test": "test"}
# the language as file names spell it (fnmatch): Chinese is `Ch`, and `Cn` in test_Cn_MRE_OIEDataset.json
_CODE = {MMMLanguage.ja: "Ja", MMMLanguage.en: "En", MMMLanguage.zh: "C[hn]"}
# the paper's order, which the files carry as an index; the OIE set has none (`<prefix>_<code>_MRE_OIE...`)
_INDEX = {
    MMMTask.scnm: 0,
    MMMTask.scpos_rw: 1,
    MMMTask.scpos_adj_n: 2,
    MMMTask.scpos_n: 3,
    MMMTask.scpos_adj: 4,
    MMMTask.tcree: 5,
}
# the languages of the prompts (prompt.fields, direction.instruction); Chinese texts get English ones
_PROMPT_LANGUAGES = ("en", "ja")


class MMMHubError(DataFormatError):
    """An MMM set cannot be fetched from the hub or found in its listing (with what to do instead)."""


@dataclass(frozen=True)
class HubFile:
    """One file of the collection: where it is published and where the cache holds it."""

    repo: str
    name: str
    path: Path

    def __str__(self) -> str:
        return f"{self.repo}/{self.name}"


def file_glob(split: str, lang: MMMLanguage | str, task: MMMTask | str) -> str:
    """The shape of a set's file name in its repository (fnmatch syntax), e.g. `Train_Ja_0_*.json`."""
    lang, task = MMMLanguage(lang), MMMTask(task)
    middle = "MRE_OIEDataset" if task is MMMTask.oie else f"{_INDEX[task]}_*"
    return f"{_PREFIX[split]}_{_CODE[lang]}_{middle}.json"


def match_file(names: list[str], glob: str) -> str | None:
    """The one listed name of this shape (letter case ignored), None when there is none; two is an error."""
    pattern = re.compile(fnmatch.translate(glob), re.IGNORECASE)
    hits = sorted(n for n in names if pattern.match(n))
    if len(hits) > 1:
        raise MMMHubError(f"several files match {glob}: {', '.join(hits)}; give one with dataset.path")
    return hits[0] if hits else None


def _cached(repo: str, glob: str) -> HubFile | None:
    """The file downloaded before (no network); the snapshot holds only whole files."""
    snapshot = cached_snapshot(repo, repo_type="dataset")
    if snapshot is None:
        return None
    name = match_file([p.name for p in snapshot.iterdir() if p.is_file()], glob)
    return HubFile(repo, name, snapshot / name) if name else None


def _failed(what: str, e: Exception) -> MMMHubError:
    """A transfer that broke after the hub answered: what failed and why, in one line."""
    why = str(e).splitlines()[0][:160] if str(e) else ""
    return MMMHubError(f"{what} failed ({type(e).__name__}: {why}); run it again, or give dataset.path")


def _download(repo: str, glob: str) -> HubFile:
    """List the repository, pick the file of this shape and download it into the Hugging Face cache."""
    from huggingface_hub import HfApi, hf_hub_download

    try:
        names = HfApi().list_repo_files(repo, repo_type="dataset")
    except Exception as e:  # the transport's error types vary
        raise _failed(f"listing {repo} on the Hugging Face hub", e) from e
    name = match_file(names, glob)
    if name is None:
        listed = ", ".join(sorted(n for n in names if n.lower().endswith(".json")))
        raise MMMHubError(f"{repo} holds no file like {glob} (it holds {listed or 'no .json file'})")
    log.info("downloading %s/%s from the Hugging Face hub (licence %s)", repo, name, LICENCE)
    try:
        return HubFile(repo, name, Path(hf_hub_download(repo, name, repo_type="dataset")))
    except Exception as e:  # an interrupted transfer: the hub client keeps no partial file as whole
        raise _failed(f"downloading {repo}/{name}", e) from e


def _unreachable(lang: str, task: str, globs: dict[str, str], why: str) -> MMMHubError:
    """One line: what could not be fetched, the command that fetches it elsewhere, and dataset.path."""
    wanted = " and ".join(f"{REPOS[s]}: {g}" for s, g in globs.items())
    fetch = "; ".join(f"hf download {REPOS[s]} --repo-type dataset --include '{g}'" for s, g in globs.items())
    return MMMHubError(
        f"the MMM set lang={lang} task={task} is not in the Hugging Face cache and cannot be fetched "
        f"({why}): fetch {wanted} where the hub is reachable ({fetch}; the cache is then used "
        "offline), or give a local copy with dataset.path=<the training .json file, or a folder holding "
        "train.json and test.json>"
    )


def mmm_files(lang: MMMLanguage | str, task: MMMTask | str) -> dict[str, HubFile]:
    """The training and test file of one set, from the cache or downloaded into it (module docstring)."""
    lang, task = MMMLanguage(lang), MMMTask(task)
    globs = {split: file_glob(split, lang, task) for split in REPOS}
    found = {split: _cached(REPOS[split], glob) for split, glob in globs.items()}
    missing = {split: globs[split] for split, f in found.items() if f is None}
    if missing:
        reachable, why = hub_status(REPOS[next(iter(missing))], repo_type="dataset")
        if not reachable:
            raise _unreachable(lang.value, task.value, missing, why)
        found.update({split: _download(REPOS[split], glob) for split, glob in missing.items()})
    return {split: f for split, f in found.items() if f is not None}


def from_hub(ds: DatasetConfig) -> bool:
    """The config names an MMM set (`dataset.lang`, `dataset.task`) and no local copy (`dataset.path`)."""
    return ds.path is None and ds.lang is not None and ds.task is not None


def load_mmm(ds: DatasetConfig, wli_format: WLIFormat | None = None) -> dict[str, list[Record]]:
    """The train and test records of the config's MMM set, read by the MMM reader with its bad-row policy."""
    files = mmm_files(ds.lang, ds.task)
    return {
        split: load_source(Source.mmm.value, f.path, on_bad_row=ds.on_bad_row, wli_format=wli_format)["all"]
        for split, f in files.items()
    }


def source_note(ds: DatasetConfig) -> str | None:
    """Where a hub set came from and its licence (read from the cache once loaded); None for other data."""
    if not from_hub(ds):
        return None
    files = mmm_files(ds.lang, ds.task)
    return f"MMM collection, licence {LICENCE}: train {files['train']}, test {files['test']}"


def prompt_language(lang: str) -> str:
    """The prompt language of an MMM language: its own where the project has prompts, else English."""
    return lang if lang in _PROMPT_LANGUAGES else "en"
