"""The structure rules of docs/ARCHITECTURE.md, checked on the source tree."""
import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "nlls"
MAX_LINES = 400
MAX_FORWARD_LINES = 40


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules():
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(name: str, path: Path):
    """``(target module, imported name or None)`` for every import of an nlls module in
    ``path``, function-level imports included."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            target = ".".join(base + ([node.module] if node.module else []))
            if target.split(".")[0] == "nlls":
                for alias in node.names:
                    yield target, alias.name
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "nlls":
                    yield alias.name, None


def _edges():
    modules = _modules()
    edges = {}
    for name, path in modules.items():
        for target, imported in _imports(name, path):
            full = f"{target}.{imported}" if imported else target
            edges.setdefault(name, set()).add(full if full in modules else target)
    return modules, edges


def test_no_module_imports_a_private_name_of_another_module():
    modules, _ = _edges()
    private = []
    for name, path in modules.items():
        for target, imported in _imports(name, path):
            module = f"{target}.{imported}" if f"{target}.{imported}" in modules else target
            if imported and imported.startswith("_") and not imported.startswith("__") and module != name:
                private.append(f"{name} imports {target}.{imported}")
    assert not private, private


def test_no_import_cycles_counting_function_level_imports():
    modules, edges = _edges()
    # a package's __init__ only re-exports: its imports are not dependencies of the package
    inits = {n for n, p in modules.items() if p.name == "__init__.py"}
    graph = {m: {d for d in ds if d in modules and d not in inits and d != m}
             for m, ds in edges.items() if m not in inits}
    state, cycles = {}, []

    def visit(node, stack):
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                cycles.append(" -> ".join(stack[stack.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not cycles, cycles


def test_core_never_imports_solve_layer_config_or_io():
    _, edges = _edges()
    bad = [f"{m} -> {d}" for m, ds in edges.items() if m.startswith("nlls.core")
           for d in ds if d.split(".")[1] in ("solve", "backward", "layer", "config", "io", "cli")]
    assert not bad, bad


def test_files_stay_short():
    long = [f"{p.relative_to(ROOT)} ({len(p.read_text(encoding='utf-8').splitlines())})"
            for folder in ("nlls", "bench") for p in sorted((ROOT / folder).rglob("*.py"))
            if len(p.read_text(encoding="utf-8").splitlines()) > MAX_LINES]
    assert not long, long


def test_the_layer_forward_only_validates_and_delegates():
    tree = ast.parse((PACKAGE / "layer.py").read_text(encoding="utf-8"))
    forward = [item for node in ast.walk(tree) if isinstance(node, ast.ClassDef)
               and node.name == "OptimizationLayer" for item in node.body
               if isinstance(item, ast.FunctionDef) and item.name == "forward"]
    assert len(forward) == 1
    assert forward[0].end_lineno - forward[0].lineno + 1 <= MAX_FORWARD_LINES


def test_importing_nlls_does_not_load_the_compiler():
    probe = subprocess.run([sys.executable, "-c", "import sys, nlls; print('torch._inductor' in sys.modules)"],
                           capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.strip() == "False"
