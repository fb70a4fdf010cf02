"""The MMM collection from the hub (mre/data/hub_data.py), against a real local HTTP server that speaks the
hub's API (tests/fake_hub.py): file names matched in the published listings, listing + download + read,
the cache used with no request at all, offline and unreachable hubs failing within seconds with one
message, an interrupted download leaving nothing partial, and `dataset.path` / MRE_PAPER_DATA winning.
No test reaches the network."""

from __future__ import annotations

import itertools
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from huggingface_hub import constants, try_to_load_from_cache

from mre.config import compose
from mre.data.dataset import load_sources
from mre.data.hub_data import REPOS, MMMHubError, file_glob, match_file, mmm_files, source_note
from mre.data.options import MMMLanguage, MMMTask
from tests.conftest import REPO
from tests.fake_hub import FakeHub

TRAIN, TEST = REPOS["train"], REPOS["test"]

# The published file listings, as the hub's commit pages show them: MMM-dataset-Trainset commit 543b829
# ("Upload 22 files") and MMM-datasets-Testset commit d2239a9 ("Upload 21 files"), plus their READMEs.
PUBLISHED = {
    "train": [
        ".gitattributes",
        "README.md",
        *(f"Train_Ch_{i}" for i in ("0_SCNM_dataset.json", "1_SCPOS_RW_clear2.json")),
        *(f"Train_Ch_{i}_SCPOS_1W_{k}_clear2.json" for i, k in ((2, "adj_n"), (3, "n"), (4, "adj"))),
        "Train_Ch_5_TCREE_2k_clear2.json",
        "Train_Ch_MRE_OIEDataset.json",
        "Train_En_0_SCNM_dataset.json",
        "Train_En_1_SCPOS_RW_dataset.json",
        *(f"Train_En_{i}_SCPOS_1W_{k}_clear2.json" for i, k in ((2, "adj_n"), (3, "n"), (4, "adj"))),
        "Train_En_5_TCREE_2k_clear2.json",
        "Train_En_MRE_OIEDataset.json",
        "Train_Ja_0_SCNM_5343.json",
        "Train_Ja_1_SCPOS_2K.json",
        *(f"Train_Ja_{i}_SCPOS_18W_{k}.json" for i, k in ((2, "adj_n"), (3, "n"), (4, "adj"))),
        "Train_Ja_5_TCREE_2k.json",
        "Train_Ja_MRE_OIEDataset.json",
        "Train_OIEMRE_2W2_datasets.json",
    ],
    "test": [
        ".gitattributes",
        "README.md",
        "test_Ch_0_SCNM_dataset.json",
        "test_Ch_1_SCPOS_RW_clear2.json",
        *(f"test_Ch_{i}_SCPOS_1W_{k}_clear2.json" for i, k in ((2, "adj_n"), (3, "n"), (4, "adj"))),
        "test_Ch_5_TCREE_2k_clear2.json",
        "test_Cn_MRE_OIEDataset.json",
        "test_En_0_SCNM_dataset.json",
        "test_En_1_SCPOS_RW_dataset.json",
        *(f"test_En_{i}_SCPOS_1W_{k}_clear2.json" for i, k in ((2, "adj_n"), (3, "n"), (4, "adj"))),
        "test_En_5_TCREE_2k_clear2.json",
        "test_En_MRE_OIEDataset.json",
        "test_Ja_0_SCNM_5343.json",
        "test_Ja_1_SCPOS_2K.json",
        *(f"test_Ja_{i}_SCPOS_18W_{k}.json" for i, k in ((2, "adj_n"), (3, "n"), (4, "adj"))),
        "test_Ja_5_TCREE_2k.json",
        "test_Ja_MRE_OIEDataset.json",
    ],
}

EXPECTED = {
    ("en", "scnm"): ("Train_En_0_SCNM_dataset.json", "test_En_0_SCNM_dataset.json"),
    ("ja", "scnm"): ("Train_Ja_0_SCNM_5343.json", "test_Ja_0_SCNM_5343.json"),
    ("ja", "scpos_rw"): ("Train_Ja_1_SCPOS_2K.json", "test_Ja_1_SCPOS_2K.json"),
    ("ja", "scpos_adj_n"): ("Train_Ja_2_SCPOS_18W_adj_n.json", "test_Ja_2_SCPOS_18W_adj_n.json"),
    ("ja", "scpos_n"): ("Train_Ja_3_SCPOS_18W_n.json", "test_Ja_3_SCPOS_18W_n.json"),
    ("ja", "scpos_adj"): ("Train_Ja_4_SCPOS_18W_adj.json", "test_Ja_4_SCPOS_18W_adj.json"),
    ("ja", "tcree"): ("Train_Ja_5_TCREE_2k.json", "test_Ja_5_TCREE_2k.json"),
    ("en", "scpos_n"): ("Train_En_3_SCPOS_1W_n_clear2.json", "test_En_3_SCPOS_1W_n_clear2.json"),
    ("zh", "tcree"): ("Train_Ch_5_TCREE_2k_clear2.json", "test_Ch_5_TCREE_2k_clear2.json"),
    ("zh", "oie"): ("Train_Ch_MRE_OIEDataset.json", "test_Cn_MRE_OIEDataset.json"),
    ("en", "oie"): ("Train_En_MRE_OIEDataset.json", "test_En_MRE_OIEDataset.json"),
}


def oiellm(
    rows: list[tuple[str, str, list[tuple[str, str]]]], task: str = "NER", lines: bool = False
) -> bytes:
    """Records in the published format, {"input": "<text>/<task>", "output": "<label>/<task>/:Type;Entity"}:
    a JSON list, or one object per line (the hub page does not show which layout the files use)."""
    items = [
        {"input": f"{text}/{task}", "output": f"{label}/{task}/" + "".join(f":{t};{e}" for t, e in pairs)}
        for text, label, pairs in rows
    ]
    if lines:
        return "\n".join(json.dumps(i, ensure_ascii=False) for i in items).encode()
    return json.dumps(items, ensure_ascii=False, indent=4).encode()


TRAIN_ROWS = [
    (
        "Marie Curie won the Nobel Prize in Stockholm.",
        "Science",
        [("Person", "Marie Curie"), ("Location", "Stockholm")],
    ),
    (
        "The Beatles recorded Abbey Road in London.",
        "Literature",
        [("Organization", "The Beatles"), ("Product Name", "Abbey Road"), ("Location", "London")],
    ),
    ("Toyota opened a plant near Nagoya.", "Society", [("Corporation", "Toyota"), ("Location", "Nagoya")]),
    ("The committee met on Tuesday.", "Society", []),
    (
        "Alan Turing studied at Cambridge.",
        "Science",
        [("Person", "Alan Turing"), ("Organization", "Cambridge")],
    ),
    (
        "Hokusai painted The Great Wave.",
        "Literature",
        [("Person", "Hokusai"), ("Product Name", "The Great Wave")],
    ),
]
TEST_ROWS = [
    ("Ada Lovelace wrote about the Analytical Engine.", "Science", [("Person", "Ada Lovelace")]),
    ("Sony announced a camera in Tokyo.", "Society", [("Corporation", "Sony"), ("Location", "Tokyo")]),
    ("Basho wrote haiku on the road to Oku.", "Literature", [("Person", "Basho")]),
]
TRAIN_FILE, TEST_FILE = EXPECTED[("en", "scnm")]


def hub_repos() -> dict[str, dict[str, bytes]]:
    """The two repositories with their published names; the English SCNM set holds the rows above."""
    repos: dict[str, dict[str, bytes]] = {
        repo: {name: b"[]" for name in PUBLISHED[split]} for split, repo in REPOS.items()
    }
    repos[TRAIN][TRAIN_FILE] = oiellm(TRAIN_ROWS)
    repos[TEST][TEST_FILE] = oiellm(TEST_ROWS, lines=True)
    return repos


@pytest.fixture
def hf_cache(monkeypatch, tmp_path) -> Path:
    """An empty Hugging Face cache for this test, hub online by default (HF_HUB_OFFLINE off)."""
    cache = tmp_path / "hf"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    return cache


def point_at(monkeypatch, url: str) -> None:
    """HF_ENDPOINT for this process: huggingface_hub reads the variable once, at import, into `constants`."""
    monkeypatch.setenv("HF_ENDPOINT", url)
    monkeypatch.setattr(constants, "ENDPOINT", url)
    monkeypatch.setattr(
        constants, "HUGGINGFACE_CO_URL_TEMPLATE", url + "/{repo_id}/resolve/{revision}/{filename}"
    )


def closed_port_url() -> str:
    """An address where nothing listens: connections are refused, as on a machine without the hub."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def mmm_config(lang: str = "en", task: str = "scnm", *more: str):
    return compose(["dataset=mmm", f"dataset.lang={lang}", f"dataset.task={task}", *more]).dataset


# --------------------------------------------------------------------------- matching the listings


@pytest.mark.parametrize(("lang", "task"), sorted(EXPECTED))
def test_names_are_matched_in_the_published_listings(lang, task):
    train, test = EXPECTED[(lang, task)]
    assert match_file(PUBLISHED["train"], file_glob("train", lang, task)) == train
    assert match_file(PUBLISHED["test"], file_glob("test", lang, task)) == test


def test_every_set_has_one_file_in_each_repository():
    for lang, task, split in itertools.product(MMMLanguage, MMMTask, REPOS):
        name = match_file(PUBLISHED[split], file_glob(split, lang, task))
        assert name is not None and name != "Train_OIEMRE_2W2_datasets.json", (lang, task, split)


def test_two_matching_files_are_an_error_naming_both():
    with pytest.raises(MMMHubError, match=r"Train_En_0_a\.json, Train_En_0_b\.json.*dataset\.path"):
        match_file(["Train_En_0_a.json", "Train_En_0_b.json"], file_glob("train", "en", "scnm"))


# --------------------------------------------------------------------------- against a local hub


def test_listed_downloaded_read_then_served_from_the_cache(monkeypatch, hf_cache):
    with FakeHub(hub_repos()) as hub:
        point_at(monkeypatch, hub.url)
        ds = mmm_config()
        sources = load_sources(ds)
        assert [r.text for r in sources["train"]] == [text for text, _, _ in TRAIN_ROWS]
        assert [r.tli for r in sources["test"]] == [label for _, label, _ in TEST_ROWS]
        beatles = sources["train"][1]
        assert [(p.type, p.span) for p in beatles.wli] == TRAIN_ROWS[1][2]
        assert all(beatles.text[p.start : p.end] == p.span for p in beatles.wli)
        asked = [path for _, path in hub.requests]
        assert f"/api/datasets/{TRAIN}/tree/main" in asked and f"/api/datasets/{TEST}/tree/main" in asked
        downloads = [p for m, p in hub.requests if m == "GET" and "/resolve/" in p]
        assert downloads == [
            f"/datasets/{TRAIN}/resolve/main/{TRAIN_FILE}",
            f"/datasets/{TEST}/resolve/main/{TEST_FILE}",
        ]

        hub.requests.clear()
        assert load_sources(ds) == sources
        assert hub.requests == []  # the cache answered: not even a metadata request
        note = source_note(ds)
        assert (
            note
            == f"MMM collection, licence CC BY-NC 4.0: train {TRAIN}/{TRAIN_FILE}, test {TEST}/{TEST_FILE}"
        )
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert load_sources(ds) == sources  # offline, the cached set is used


def test_offline_fails_within_seconds_naming_repositories_files_and_path(monkeypatch, hf_cache):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    start = time.monotonic()
    with pytest.raises(MMMHubError) as e:
        load_sources(mmm_config())
    assert time.monotonic() - start < 5
    msg = str(e.value)
    assert "\n" not in msg and "HF_HUB_OFFLINE is set" in msg
    assert (
        f"{TRAIN}: Train_En_0_*.json" in msg and f"{TEST}: test_En_0_*.json" in msg and "dataset.path=" in msg
    )
    assert f"hf download {TRAIN} --repo-type dataset --include 'Train_En_0_*.json'" in msg


def test_unreachable_hub_fails_within_seconds(monkeypatch, hf_cache):
    point_at(monkeypatch, closed_port_url())
    start = time.monotonic()
    with pytest.raises(MMMHubError, match=r"the hub is not reachable .*Train_Ja_1_\*\.json.*dataset\.path"):
        load_sources(mmm_config("ja", "scpos_rw"))
    assert time.monotonic() - start < 5


def test_an_interrupted_download_leaves_nothing_read_as_whole(monkeypatch, hf_cache):
    """The server sends half the training file, closes, and refuses the client's retries: the hub client
    raises and links no snapshot file; offline, the set is missing (not truncated); online, it is whole."""
    repos = hub_repos()
    with FakeHub(repos) as hub:
        point_at(monkeypatch, hub.url)
        hub.truncate_next_download()
        with pytest.raises(MMMHubError, match=rf"downloading {TRAIN}/{TRAIN_FILE} failed"):
            mmm_files("en", "scnm")
        assert try_to_load_from_cache(TRAIN, TRAIN_FILE, repo_type="dataset") is None
        assert not list(hf_cache.glob("datasets--*/snapshots/*/*"))
        assert all(p.name.endswith(".incomplete") for p in hf_cache.glob("datasets--*/blobs/*"))

        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
        with pytest.raises(MMMHubError, match=rf"{TRAIN}: Train_En_0_\*\.json"):
            mmm_files("en", "scnm")
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        hub.refusing = False
        files = mmm_files("en", "scnm")
        assert files["train"].path.read_bytes() == repos[TRAIN][TRAIN_FILE]


# --------------------------------------------------------------------------- local copies win


def test_dataset_path_wins_over_the_hub(monkeypatch, hf_cache, tmp_path):
    point_at(monkeypatch, closed_port_url())
    (tmp_path / "train.json").write_bytes(oiellm(TRAIN_ROWS))
    (tmp_path / "test.json").write_bytes(oiellm(TEST_ROWS))
    sources = load_sources(mmm_config("en", "scnm", f"dataset.path={tmp_path}"))
    assert {k: len(v) for k, v in sources.items()} == {"train": len(TRAIN_ROWS), "test": len(TEST_ROWS)}


def test_paper_sets_come_from_the_hub_unless_MRE_PAPER_DATA_is_given(monkeypatch, hf_cache, tmp_path):
    monkeypatch.delenv("MRE_PAPER_DATA", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    ds = compose(["dataset=scpos_rw"]).dataset
    assert ds.path is None and (str(ds.lang), str(ds.task)) == ("ja", "scpos_rw")
    with pytest.raises(MMMHubError, match=rf"{TRAIN}: Train_Ja_1_\*\.json"):
        load_sources(ds)
    monkeypatch.setenv("MRE_PAPER_DATA", str(tmp_path))
    giellm = [{"input": "東京で会議があった。\n<社会><文芸>\n品詞抽出", "output": "<社会>品詞抽出:名詞;会議"}]
    (tmp_path / "scpos_rw.json").write_text(json.dumps(giellm, ensure_ascii=False))
    ds = compose(["dataset=scpos_rw"]).dataset
    assert ds.path == str(tmp_path / "scpos_rw.json")
    (rec,) = load_sources(ds)["all"]
    assert (rec.text, rec.tli, rec.wli[0].span) == ("東京で会議があった。", "社会", "会議")


# --------------------------------------------------------------------------- python -m mre.data


def _data_view(env: dict[str, str], *overrides: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mre.data", *overrides],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **env},
    )


def test_data_view_shows_statistics_licence_and_origin(hf_cache):
    with FakeHub(hub_repos()) as hub:
        out = _data_view(
            {"HF_ENDPOINT": hub.url, "HF_HUB_CACHE": str(hf_cache)},
            "dataset=mmm",
            "dataset.lang=en",
            "dataset.task=scnm",
        )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "licence CC BY-NC 4.0" in out.stdout and f"{TRAIN}/{TRAIN_FILE}" in out.stdout
    assert f"{TEST}/{TEST_FILE}" in out.stdout and "mmm: splits" in out.stdout and "Science" in out.stdout


def test_data_view_offline_prints_one_line_and_exits_2(hf_cache):
    out = _data_view({"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(hf_cache)}, "dataset=mmm", "dataset.lang=en")
    assert out.returncode == 2, out.stderr[-3000:]
    assert out.stdout.startswith("error: the MMM set lang=en task=scnm") and out.stdout.count("\n") == 1
    assert TRAIN in out.stdout and TEST in out.stdout and "dataset.path=" in out.stdout
