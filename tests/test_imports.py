"""The import structure of dfnas, read from the source with ``ast`` (no module is imported here):

- no module imports a leaf stage (what a rule runs and nothing else builds on);
- the module graph has no cycle; the only package -> own submodule edges are registries
  (dfnas.spaces, dfnas.strategies, dfnas.models import their submodules to register them), and
  those submodules do not import their package;
- few dfnas imports hide inside functions, where the graph is easy to miss.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

from conftest import REPO

PACKAGE = REPO / "dfnas"
LEAVES = ("teacher_eval", "synthesize", "merge", "synthesis_quality", "search", "retrain", "student", "ranking",
          "supernet_test", "report")
REGISTRIES = ("dfnas.spaces", "dfnas.strategies", "dfnas.models")
MAX_FUNCTION_IMPORTS = 5


@dataclass(frozen=True)
class Import:
    importer: str  # module name; a package's __init__ is the package
    imported: str  # the dfnas module it names: ``from P import X`` names P.X when that is a module, else P
    where: str  # path:line
    in_function: bool
    statement: str


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_package(name: str, modules: dict) -> bool:
    return modules[name].name == "__init__.py"


def dfnas_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def collect_imports(modules: dict[str, Path]) -> list[Import]:
    found = []
    for name, path in modules.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        base = name if is_package(name, modules) else name.rpartition(".")[0]  # what a relative import starts from

        def visit(node, in_function):
            for child in ast.iter_child_nodes(node):
                inside = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
                targets = []
                if isinstance(child, ast.Import):
                    targets = [alias.name for alias in child.names]
                elif isinstance(child, ast.ImportFrom):
                    source = child.module or ""
                    if child.level:
                        parent = base.split(".")[: len(base.split(".")) - (child.level - 1)]
                        source = ".".join(parent + ([source] if source else []))
                    targets = [f"{source}.{a.name}" if f"{source}.{a.name}" in modules else source
                               for a in child.names]
                for target in dict.fromkeys(targets):
                    if target == "dfnas" or target.startswith("dfnas."):
                        found.append(Import(name, target, f"{path.relative_to(REPO)}:{child.lineno}", in_function,
                                            ast.unparse(child)))
                visit(child, inside)

        visit(tree, False)
    return found


MODULES = dfnas_modules()
IMPORTS = collect_imports(MODULES)


def test_the_scan_sees_the_package():
    assert {"dfnas", "dfnas.search", "dfnas.spaces", "dfnas.spaces.darts", "dfnas.strategies.spos"} <= set(MODULES)
    assert all(f"dfnas.{leaf}" in MODULES for leaf in LEAVES)
    edges = {(i.importer, i.imported) for i in IMPORTS}
    # Every form resolves: ``from P import submodule``, ``from M import name`` and ``import dfnas``.
    assert ("dfnas.spaces", "dfnas.spaces.darts") in edges and ("dfnas.latency", "dfnas.spaces.proxyless") in edges
    assert ("dfnas.search", "dfnas.strategies") in edges and ("dfnas.synthesize", "dfnas.shards") in edges
    assert all(i.imported in MODULES for i in IMPORTS), [i for i in IMPORTS if i.imported not in MODULES]


def test_no_module_imports_a_leaf_stage():
    offending = [f"{i.where}: {i.statement}" for i in IMPORTS
                 if i.imported in {f"dfnas.{leaf}" for leaf in LEAVES} and i.importer != i.imported]
    assert not offending, "leaf stages imported by other modules:\n" + "\n".join(offending)


def test_registry_submodules_do_not_import_their_package():
    offending = [f"{i.where}: {i.statement}" for i in IMPORTS
                 if i.imported in REGISTRIES and i.importer.startswith(i.imported + ".")]
    assert not offending, "a registered module imports its registry (an import cycle):\n" + "\n".join(offending)


def test_only_registries_import_their_own_submodules():
    own = {(i.importer, i.imported) for i in IMPORTS
           if is_package(i.importer, MODULES) and i.imported.startswith(i.importer + ".")}
    assert {importer for importer, _ in own} <= set(REGISTRIES), own


def find_cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (or a module importing itself)."""
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def strong_connect(v):  # Tarjan's algorithm
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                strong_connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1 or v in edges.get(v, ()):
                cycles.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            strong_connect(v)
    return cycles


def test_find_cycles_finds_cycles():
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert find_cycles({"a": {"b"}, "b": {"c"}, "d": {"a", "c"}}) == []
    assert find_cycles({"a": {"a"}}) == [["a"]]


def test_no_import_cycle_among_dfnas_modules():
    edges: dict[str, set[str]] = {}
    for i in IMPORTS:
        if i.importer != i.imported or not is_package(i.importer, MODULES):  # ``from P import x`` inside P
            edges.setdefault(i.importer, set()).add(i.imported)
    cycles = find_cycles(edges)
    details = [f"{' <-> '.join(c)}:\n" + "\n".join(f"  {i.where}: {i.statement}" for i in IMPORTS
                                                   if i.importer in c and i.imported in c) for c in cycles]
    assert not cycles, "import cycles:\n" + "\n".join(details)


def test_few_dfnas_imports_inside_functions(capsys):
    hidden = [i for i in IMPORTS if i.in_function]
    from_imports = [i for i in hidden if i.statement.startswith("from ")]
    with capsys.disabled():
        print(f"\n{len(hidden)} dfnas import(s) inside functions ({len(from_imports)} of them 'from dfnas'):")
        for i in hidden:
            print(f"  {i.where}: {i.statement}")
    assert len(from_imports) <= MAX_FUNCTION_IMPORTS, [f"{i.where}: {i.statement}" for i in from_imports]
