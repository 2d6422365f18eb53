"""The house's import rules, read from the source with ast: no cycles inside ddpm, no Streamlit and no UI text in ddpm."""
from __future__ import annotations

import ast
from pathlib import Path

DDPM = Path(__file__).resolve().parent.parent / "ddpm"
UI_TEXT = "ddpm.explain"  # the app's explanations: pages import it, the library never does


def module_name(path: Path) -> str:
    parts = path.relative_to(DDPM.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Every module ``path`` imports, at the top or inside a function, relative imports resolved."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")
            base = base[:len(base) - node.level + 1] if node.level else []
            target = ".".join(base + ([node.module] if node.module else []))
            found.add(target)
            found.update(f"{target}.{alias.name}" for alias in node.names)  # `from . import checkpoints`
    return found


def ddpm_graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in DDPM.rglob("*.py")}
    return {name: {m for m in imports_of(path) if m in modules and m != name} for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
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


def test_no_module_of_ddpm_imports_another_that_imports_it_back():
    graph = {k: v - {"ddpm"} for k, v in ddpm_graph().items() if k != "ddpm"}  # the package's __init__ re-exports
    assert find_cycle(graph) is None


def test_figures_and_downloads_share_the_imaging_module_not_each_other():
    graph = ddpm_graph()
    assert "ddpm.imaging" in graph["ddpm.figures"] and "ddpm.imaging" in graph["ddpm.export"]
    assert "ddpm.export" not in graph["ddpm.figures"] and "ddpm.figures" not in graph["ddpm.export"]


def test_ddpm_imports_neither_streamlit_nor_the_app_text():
    offenders = {module_name(p): sorted(m for m in imports_of(p) if m.split(".")[0] == "streamlit" or m == UI_TEXT)
                 for p in DDPM.rglob("*.py") if module_name(p) != UI_TEXT}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_the_figures_module_loads_without_torch_so_home_can_draw_before_the_library_loads():
    import subprocess
    import sys

    code = "import sys, ddpm.figures; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=DDPM.parent, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", "ddpm.figures (or a module it imports at the top) now imports torch"
