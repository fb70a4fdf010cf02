"""The package's structure: no import cycles, one training pipeline, heavy optional imports only on demand."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO

PACKAGE = REPO / "mre"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Module -> the package modules it imports, at module level or inside functions."""
    files = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*up, base] if base else up)
                targets = [base, *(f"{base}.{a.name}" for a in node.names)]
            else:
                continue
            for t in targets:
                while t and t not in files:
                    t = t.rpartition(".")[0]
                if t and t != name:
                    edges.add(t)
        graph[name] = edges
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules, or None."""
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycles():
    graph = import_graph()
    assert "mre.tasks" in graph["mre.runner"] and "mre.tasks.base" in graph["mre.tasks.generative"]
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph) or [])


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
