"""The layout is an architecture (ARCHITECTURE.md): these rules keep it one.

No import cycles; the shared core imports no program; the programs do not import each other
(tcpcopyctl may read tcpcopyd's status schema, the document it prints); production code never
imports the lab; workers/ holds process roles only, each with a `main(spec_json)` entry point.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SHARED = ("appliance.core", "appliance.config", "appliance.engine", "appliance.host", "appliance.compare")
PROGRAMS = ("appliance.tcpcopyd", "appliance.interceptd", "appliance.tcpcopyctl")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports() -> dict[str, set[str]]:
    """Every module of appliance/ and workers/ -> the project modules it imports (anywhere in it)."""
    files = [p for top in ("appliance", "workers") for p in (ROOT / top).rglob("*.py")]
    known = {module_name(p) for p in files}
    graph: dict[str, set[str]] = {}
    for path in files:
        name = module_name(path)
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                for alias in node.names:
                    sub = f"{node.module}.{alias.name}"
                    found.add(sub if sub in known else node.module)
            elif isinstance(node, ast.Import):
                found.update(a.name for a in node.names)
        graph[name] = {m for m in found if m in known and m != name}
    return graph


def within(module: str, packages: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in packages)


def test_no_import_cycles():
    graph = imports()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(nxt):] + [nxt]))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)


def test_the_shared_core_imports_no_program_and_no_worker():
    for module, deps in imports().items():
        if within(module, SHARED):
            bad = {d for d in deps if within(d, PROGRAMS) or d.startswith("workers") or within(d, ("appliance.lab",))}
            assert not bad, f"{module} imports {sorted(bad)}"


def test_programs_do_not_import_each_other():
    allowed = {("appliance.tcpcopyctl", "appliance.tcpcopyd.status_schema")}
    for module, deps in imports().items():
        for program in PROGRAMS:
            if not within(module, (program,)):
                continue
            for dep in deps:
                other = next((p for p in PROGRAMS if within(dep, (p,))), None)
                if other and other != program:
                    assert (program, dep) in allowed, f"{module} imports {dep}"


def test_production_code_never_imports_the_lab():
    for module, deps in imports().items():
        if not within(module, ("appliance.lab",)):
            assert not any(within(d, ("appliance.lab",)) for d in deps), f"{module} imports the lab"


def test_workers_are_process_roles_with_an_entry_point():
    for path in sorted((ROOT / "workers").glob("*.py")):
        if path.name in ("__init__.py", "base.py"):
            continue
        tree = ast.parse(path.read_text())
        mains = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "main"]
        assert mains and [a.arg for a in mains[0].args.args] == ["spec_json"], f"{path.name}: no main(spec_json)"
