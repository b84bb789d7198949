"""Each DVC stage's code deps are closed under the imports of the command it runs.

``dvc repro`` reruns a stage only when one of its deps changed, so a module the stage imports
but does not list lets it serve stale outputs. This test follows, from the Typer command a stage
runs, every import inside ``augment/`` (function-level ones included, ``TYPE_CHECKING`` blocks
left out since they never run) and every registry implementation the stage can load by name,
and fails naming the first module that lies outside the stage's deps.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "augment"


def _module_file(name: str) -> Path | None:
    base = REPO.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _with_parents(name: str) -> list[str]:
    # Importing a.b.c runs a/__init__.py and a/b/__init__.py first.
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts) + 1)]


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _walk_runtime(node: ast.AST):
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and _is_type_checking(child):
            yield from (n for stmt in child.orelse for n in _walk_runtime_stmt(stmt))
            continue
        yield child
        yield from _walk_runtime(child)


def _walk_runtime_stmt(stmt: ast.AST):
    yield stmt
    yield from _walk_runtime(stmt)


def _imports(nodes) -> set[str]:
    found: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "augment"}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.split(".")[0] != "augment":
                continue
            found.add(node.module)
            # `from augment.x import y` imports the submodule y when there is one.
            found |= {f"{node.module}.{a.name}" for a in node.names}
    return {m for m in found if _module_file(m) is not None}


def _registry_targets(tree: ast.AST, source: str, registries: dict[str, set[str]]) -> set[str]:
    """Implementations a module can load by name: ``REG.get(...)`` on an imported registry."""
    loaded: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module in registries:
            for alias in node.names:
                if re.search(rf"\b{alias.asname or alias.name}\.get\(", source):
                    loaded |= registries[node.module]
    return loaded


def _registries() -> dict[str, set[str]]:
    """Registry module -> the modules its entries name (``Entry("pkg.mod:attr", ...)``)."""
    found: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        source = path.read_text()
        if "Registry(" not in source or path.name == "registry.py":
            continue
        module = ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
        found[module] = {t.split(":")[0] for t in re.findall(r'Entry\(\s*"([\w.]+:\w+)"', source)}
    return found


def closure(roots: set[str], done: frozenset[str] = frozenset()) -> set[Path]:
    """Every file of ``augment/`` that importing ``roots`` can execute.

    Modules in ``done`` count as included but are not followed (cli.py: only the command's own
    body runs, not every command's).
    """
    registries = _registries()
    todo = [p for r in roots for p in _with_parents(r)]
    seen: set[str] = set(done)
    while todo:
        name = todo.pop()
        if name in seen or (path := _module_file(name)) is None:
            continue
        seen.add(name)
        source = path.read_text()
        tree = ast.parse(source)
        found = _imports(_walk_runtime(tree)) | _registry_targets(tree, source, registries)
        todo += [p for m in found for p in _with_parents(m)]
    files = {_module_file(m) for m in seen}
    return {f.relative_to(REPO) for f in files if f is not None}


def command_roots(command: str) -> set[str]:
    """The modules ``augment <command>`` imports: cli.py's module level plus the command body."""
    tree = ast.parse((PACKAGE / "cli.py").read_text())
    module_level = [n for n in tree.body if not isinstance(n, ast.FunctionDef)]
    roots = _imports(n for stmt in module_level for n in _walk_runtime_stmt(stmt))
    bodies = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == command]
    if not bodies:
        raise AssertionError(f"augment/cli.py has no command {command!r}")
    return roots | _imports(_walk_runtime(bodies[0]))


def command_closure(command: str) -> set[Path]:
    """Every file of ``augment/`` that running ``augment <command>`` can execute."""
    return closure(command_roots(command), frozenset({"augment.cli"})) | {Path("augment/cli.py")}


def _covered(path: Path, deps: list[str]) -> bool:
    return any(path == Path(d) or Path(d) in path.parents for d in deps)


def _stages(dvc_file: Path) -> dict[str, dict]:
    return yaml.safe_load(dvc_file.read_text())["stages"]


def _command(stage: dict) -> str:
    match = re.search(r"\baugment\s+(\w+)", stage["cmd"])
    if not match:
        raise AssertionError(f"stage command {stage['cmd']!r} runs no augment command")
    return match.group(1)


TOP = _stages(REPO / "dvc.yaml")


@pytest.mark.parametrize("name", sorted(TOP))
def test_stage_deps_are_closed_under_imports(name: str) -> None:
    stage = TOP[name]
    deps = [d for d in stage["deps"] if d.startswith("augment")]
    for dep in deps:
        assert (REPO / dep).exists(), f"dvc.yaml stage {name!r} lists {dep}, which does not exist"
    needed = command_closure(_command(stage))
    missing = sorted(str(p) for p in needed if not _covered(p, deps))
    assert not missing, f"dvc.yaml stage {name!r} imports but does not list: {missing}"


@pytest.mark.parametrize("name", sorted(TOP))
def test_stage_deps_list_nothing_it_does_not_import(name: str) -> None:
    # A dependency nothing imports makes dvc rerun the stage for no reason.
    stage = TOP[name]
    needed = command_closure(_command(stage))
    for dep in (d for d in stage["deps"] if d.startswith("augment")):
        assert any(_covered(p, [dep]) for p in needed), f"stage {name!r}: {dep} is not imported"


def test_closure_follows_function_level_imports_and_registries() -> None:
    # The checker itself: cli's command bodies import the stage, the stage loads its registry.
    files = command_closure("train")
    assert Path("augment/training/stage.py") in files
    assert Path("augment/training/losses/wgan_gp.py") in files
    assert Path("augment/evaluation/stage.py") not in files


TEMPLATES = sorted(REPO.glob("pipelines/*/dvc.yaml"))


@pytest.mark.parametrize("dvc_file", TEMPLATES, ids=lambda p: p.parent.name)
def test_templates_run_the_installed_package(dvc_file: Path) -> None:
    # A template is copied into the user's own project, where augment/ is an installed package,
    # not a folder: listing code paths would break it, so it must list none (stale or not), and
    # each of its stages runs the same command as the demo's stage of that name.
    for name, stage in _stages(dvc_file).items():
        code = [d for d in stage.get("deps", []) if str(d).startswith("augment")]
        assert not code, f"{dvc_file.relative_to(REPO)} stage {name!r} lists code paths {code}"
        assert name in TOP, f"{dvc_file.relative_to(REPO)}: stage {name!r} is not a demo stage"
        assert _command(stage) == _command(TOP[name])
