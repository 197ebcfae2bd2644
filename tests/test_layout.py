"""The shape of the house: no import circle inside `lmstack/` (lazy imports inside functions count too),
`lmstack/` never imports `plugins/`, and no module grows past 400 lines."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, modules: set[str]) -> set[str]:
    """The lmstack modules `path` imports, anywhere in the file."""
    me = module_name(path)
    package = me.split(".") if path.name == "__init__.py" else me.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1] + ([node.module] if node.module else []))
            names = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        found |= {n for n in names if n in modules or n.startswith(("lmstack.plugins", "plugins"))}
    return found - {me}


def graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in (ROOT / "lmstack").rglob("*.py")}
    return {m: imports(p, set(files)) for m, p in files.items()}


def cycle(g: dict[str, set[str]]) -> list[str] | None:
    """One import circle, as the list of modules on it, or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m):
        state[m] = 1
        stack.append(m)
        for n in sorted(g.get(m, ())):
            if state.get(n) == 1:
                return stack[stack.index(n) :] + [n]
            if n in g and n not in state and (found := visit(n)):
                return found
        state[m] = 2
        stack.pop()
        return None

    for m in sorted(g):
        if m not in state and (found := visit(m)):
            return found
    return None


def test_no_import_circle_and_no_plugins_import():
    g = graph()
    assert "lmstack.data.corpus_format" in g and g["lmstack.data.curate.pipeline"]
    assert cycle(g) is None, " -> ".join(cycle(g))
    assert not {m: i for m, i in g.items() if any(n.startswith(("lmstack.plugins", "plugins")) for n in i)}


def test_the_cycle_finder_finds_one():
    assert cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert cycle({"a": {"b"}, "b": set()}) is None


def test_every_module_is_under_400_lines():
    long = {
        str(p.relative_to(ROOT)): n
        for p in [*(ROOT / "lmstack").rglob("*.py"), *(ROOT / "plugins").rglob("*.py")]
        if (n := len(p.read_text().splitlines())) >= 400
    }
    assert not long


def test_the_packaged_folders_are_every_package_of_the_tree():
    """pyproject.toml lists the packages (plugins/ installs as lmstack.plugins, conf/ as lmstack/conf): the
    list must name every folder with Python code, or a wheel would lack it."""
    import tomllib

    setup = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    dirs = {"lmstack": "lmstack", **{k: v for k, v in setup["package-dir"].items()}}
    listed = set(setup["packages"])
    found = {"lmstack.conf"}
    for name, folder in dirs.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder).parts
            found.add(".".join((name, *rel)))
    assert listed == found
