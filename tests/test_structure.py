"""The package's structure: the layer contract (import-linter: layers, no cycles), no private names imported
across modules, one training pipeline, heavy optional imports only on demand."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO

PACKAGE = REPO / "mre"


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    """import-linter's contracts of `root`'s pyproject.toml (the layers, no cycles) over `root/mre`."""
    code = "import sys, importlinter.cli as c; sys.exit(c.lint_imports(no_cache=True, no_logo=True))"
    return subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=120)


def private_imports(root: Path) -> list[str]:
    """`from mre.x import _name` anywhere in the package: a module reaching into another's privates."""
    found = []
    for path in sorted((root / "mre").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("mre")):
                found += [
                    f"{path.relative_to(root)}:{node.lineno} {a.name}"
                    for a in node.names
                    if a.name.startswith("_") and not a.name.startswith("__")
                ]
    return found


def test_the_layer_contract_holds():
    out = lint_imports(REPO)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert "2 kept, 0 broken" in out.stdout


def _copy_package(tmp_path: Path) -> Path:
    shutil.copytree(REPO / "mre", tmp_path / "mre", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def test_the_contract_refuses_a_planted_upward_import(tmp_path):
    """The flow layer importing the analysis (one line, inside a function as lazy imports are) breaks the
    contract, and the report names the edge."""
    root = _copy_package(tmp_path)
    with open(root / "mre" / "flow" / "pairs.py", "a", encoding="utf-8") as f:
        f.write("\n\ndef _planted():\n    from mre.analysis import analyze  # noqa: F401\n")
    out = lint_imports(root)
    assert out.returncode != 0 and "BROKEN" in out.stdout
    assert "mre.flow.pairs -> mre.analysis" in out.stdout, out.stdout[-3000:]


def test_the_contract_refuses_an_unplaced_module(tmp_path):
    """Exhaustive: a new top-level module must be given a layer."""
    root = _copy_package(tmp_path)
    (root / "mre" / "stray.py").write_text("X = 1\n", encoding="utf-8")
    out = lint_imports(root)
    assert out.returncode != 0 and "mre.stray" in out.stdout, out.stdout[-3000:]


def test_no_module_imports_a_private_name_of_another(tmp_path):
    assert private_imports(REPO) == []
    root = _copy_package(tmp_path)
    with open(root / "mre" / "runner.py", "a", encoding="utf-8") as f:
        f.write("\nfrom mre.results import _planted  # noqa: E402,F401\n")
    assert private_imports(root) == [f"mre/runner.py:{_last_line(root / 'mre' / 'runner.py')} _planted"]


def _last_line(path: Path) -> int:
    return len(path.read_text(encoding="utf-8").splitlines())


def test_every_registered_task_has_a_build_function():
    import importlib
    import inspect

    from mre.tasks import TASK_MODULES, TaskName

    assert {t.value for t in TaskName} == set(TASK_MODULES)
    for module in TASK_MODULES.values():
        build = importlib.import_module(module).build
        assert list(inspect.signature(build).parameters) == ["cfg", "run_dir"], module


def test_one_place_fits_and_tests():
    """`trainer.fit` and `trainer.test` are called in mre/runner.py and nowhere else in the package."""
    calls: dict[str, list[str]] = {"fit": [], "test": []}
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            func = getattr(node, "func", None)
            if isinstance(node, ast.Call) and isinstance(func, ast.Attribute) and func.attr in calls:
                calls[func.attr].append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert [c.split(":")[0] for c in calls["fit"]] == ["mre/runner.py"], calls
    assert [c.split(":")[0] for c in calls["test"]] == ["mre/runner.py"], calls


def test_bitsandbytes_is_imported_only_for_quantized_models(tmp_path):
    """Building the default task (data, tokenizer, model) imports neither bitsandbytes nor peft; LoRA
    imports peft (which imports bitsandbytes) without bitsandbytes' CPU-kernel warning."""
    script = f"""
import sys
from pathlib import Path
from mre.config import compose
from mre.tasks import build_task
def parts(*extra):
    cfg = compose(["dataset.synthetic.n=300", "dataset.n_train=100", "dataset.n_test=20",
                   "paths.output_dir={tmp_path}", "paths.cache_dir={tmp_path}/c", *extra])
    p = build_task(cfg, Path("{tmp_path}"))
    p.module.configure_model()
parts()
print("bnb", "bitsandbytes" in sys.modules, "peft", "peft" in sys.modules)
parts("model=tiny_llama_lora")
print("peft", "peft" in sys.modules)
parts("model=tiny_llama_qlora")
print("bnb", "bitsandbytes" in sys.modules)
"""
    cmd = [sys.executable, "-c", script]
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.splitlines() == ["bnb False peft False", "peft True", "bnb True"]
    assert "gemm_4bit" not in out.stderr  # bitsandbytes' CPU-kernel warning, irrelevant without 4-bit
