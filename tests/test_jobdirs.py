"""Sweep job directory names: the swept keys, not the fixed overrides (mre.jobdirs)."""

from __future__ import annotations

from mre.jobdirs import SLUG_MAX, job_dir_name, swept_keys

ISSUE_CASE = "dataset.n_train=480,dataset.path=/a/long/path/to/snips,dataset.sort_multi_labels=true"


def test_swept_keys_from_the_command_line_and_the_sweepers_params():
    argv = ["experiment=real_tli", "dataset.path=/x/snips", "seed=42", "dataset.n_train=480"]
    # real_tli sweeps with_anchor and seed; the command line fixes seed=42
    assert swept_keys(argv, {"with_anchor": "false,true", "seed": "42,1,2"}) == {"with_anchor"}
    argv = ["-m", "seed=1,2", "lr=range(1,3)", "+extra=choice(a,b)"]
    assert swept_keys(argv, None) == {"seed", "lr", "extra"}
    assert swept_keys(["model=tiny_llama"], {}) == set()
    assert swept_keys(["seed=[1,"], None) is None  # unreadable: the caller keeps every override


def test_a_job_is_named_by_what_the_sweep_varied():
    dirname = f"{ISSUE_CASE},seed=42,with_anchor=true"
    assert job_dir_name(1, dirname, {"with_anchor"}) == "1_with_anchor-true"
    assert job_dir_name(0, dirname, {"with_anchor", "seed"}) == "0_seed-42_with_anchor-true"
    # the two jobs of the issue's sweep told apart by their names
    names = {job_dir_name(i, f"{ISSUE_CASE},with_anchor={a}", {"with_anchor"}) for i, a in enumerate("ft")}
    assert names == {"0_with_anchor-f", "1_with_anchor-t"}
    assert job_dir_name(2, "+extra=b,seed=1", {"extra"}) == "2_+extra-b"
    assert job_dir_name(3, "seed=42", set()) == "3"  # a one-job sweep varies nothing


def test_unknown_sweep_keeps_every_override_path_safe_and_short():
    assert job_dir_name(0, "with_anchor=true") == "0_with_anchor-true" and job_dir_name(7, "") == "7"
    assert job_dir_name(1, "dataset.path=/data/x/snips,seed=2") == "1_dataset.path-snips_seed-2"
    long = ",".join(f"dataset.synthetic.file_{i}=/a/b/value_{i}" for i in range(12))
    name = job_dir_name(3, long)
    assert len(name) <= SLUG_MAX + 2 and "/" not in name and "=" not in name
    assert job_dir_name(3, long) != job_dir_name(3, long.replace("file_11", "file_12"))  # hash keeps apart
    cut = job_dir_name(2, "dataset.synthetic.wli_helps_tli=0.5,model.tiny.hidden_size=64," + "seed=42," * 9)
    assert "seed-4_" not in cut and not cut.endswith("seed-4")  # whole overrides only, never half a value
