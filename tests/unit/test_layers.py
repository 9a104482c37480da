"""The package's layers, read from its source: each module imports only from its own layer or the ones below,
and the import graph between its modules has no cycle.

foundation (`errors`, the private top-level `_*` modules) < runtime < core < data < persistence < vla <
training < app (`__main__` too). Every import counts: module-level and inside functions, `import x`, `from x
import y` (`from llm_backbones.core.backbones import files` is an import of `...files`), relative imports, and
`importlib.import_module("llm_backbones...")` with a literal name. Internal code imports from the module that
defines a name, never from the package face (`from llm_backbones import get_spec`): the face is lazy and would
hide which layer the name comes from. A package's `__init__` is a module like any other; the implicit import
of the parent packages is not an edge (every submodule would form a cycle with its package's `__init__`)."""

from __future__ import annotations

import ast
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

import llm_backbones

SRC = Path(__file__).resolve().parents[2] / "src"
PACKAGE = "llm_backbones"
LAYERS = ("foundation", "runtime", "core", "data", "persistence", "vla", "training", "serving", "app")
_SUBPACKAGE_LAYER = {name: LAYERS.index(name) for name in LAYERS[1:]}


@dataclass(frozen=True)
class Import:
    importer: str  # module name
    target: str  # the llm_backbones module imported
    path: str  # file, relative to the repository root
    line: int
    code: str  # the import statement as written (normalised to one line)
    # `from llm_backbones import X` / `import llm_backbones`: through the package face
    via_face: bool = False

    def where(self) -> str:
        return f"{self.path}:{self.line}: `{self.code}`"


def module_name(path: Path, src: Path = SRC) -> str:
    parts = list(path.relative_to(src).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def layer_of(module: str) -> int:
    """The layer index of an `llm_backbones` module (not the face); a module outside every layer fails."""
    parts = module.split(".")
    assert parts[0] == PACKAGE and len(parts) > 1, module
    top = parts[1]
    if top == "__main__":
        return LAYERS.index("app")
    if top in _SUBPACKAGE_LAYER:
        return _SUBPACKAGE_LAYER[top]
    if len(parts) == 2 and (top == "errors" or top.startswith("_")):
        return LAYERS.index("foundation")
    raise AssertionError(
        f"{module} is in no layer: put it in one of the layer folders ({', '.join(LAYERS[1:])}), or make "
        "it a foundation module (`llm_backbones.errors` or a private top-level `llm_backbones._name`), and "
        "extend tests/unit/test_layers.py if a new layer is really meant."
    )


def _resolve_relative(importer: str, is_package: bool, module: str | None, level: int) -> str:
    base = importer.split(".") if is_package else importer.split(".")[:-1]
    if level > 1:
        base = base[: len(base) - (level - 1)]
    return ".".join(base + ([module] if module else []))


def collect_imports(
    source: str,
    importer: str,
    path: str,
    modules: set[str],
    exports: dict[str, str],
    is_package: bool = False,
) -> list[Import]:
    """Every import of an `llm_backbones` module in `source` (anywhere in it), resolved to the module."""
    found: list[Import] = []

    def add(node: ast.AST, target: str, via_face: bool = False) -> None:
        found.append(
            Import(importer, target, path, node.lineno, " ".join(ast.unparse(node).split()), via_face)
        )

    def is_ours(name: str) -> bool:
        return name == PACKAGE or name.startswith(PACKAGE + ".")

    def owner(name: str) -> str:
        """The longest known module that `name` is or lies in (`a.b.c` for `a.b.c.attr`)."""
        while name not in modules and "." in name:
            name = name.rsplit(".", 1)[0]
        return name

    for node in ast.walk(ast.parse(source, filename=path)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if not is_ours(alias.name):
                    continue
                if alias.name == PACKAGE:
                    add(node, PACKAGE, via_face=True)
                else:
                    add(node, owner(alias.name))
        elif isinstance(node, ast.ImportFrom):
            base = (
                _resolve_relative(importer, is_package, node.module, node.level)
                if node.level
                else node.module
            )
            if base is None or not is_ours(base):
                continue
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                if submodule in modules:
                    add(node, submodule)
                elif base == PACKAGE:
                    add(node, exports.get(alias.name, PACKAGE), via_face=True)
                else:
                    add(node, owner(base))
        elif isinstance(node, ast.Call):
            func = node.func
            name = (
                func.attr
                if isinstance(func, ast.Attribute)
                else func.id
                if isinstance(func, ast.Name)
                else None
            )
            if name == "import_module" and node.args and isinstance(node.args[0], ast.Constant):
                target = node.args[0].value
                if isinstance(target, str) and is_ours(target):
                    add(node, owner(target), via_face=target == PACKAGE)
    return found


def _face_exports() -> dict[str, str]:
    return {**llm_backbones._EXPORTS, "__version__": "llm_backbones._version"}


def package_imports(src: Path = SRC) -> tuple[set[str], list[Import]]:
    files = sorted((src / PACKAGE).rglob("*.py"))
    modules = {module_name(f, src) for f in files}
    imports: list[Import] = []
    for f in files:
        importer = module_name(f, src)
        if importer == PACKAGE:  # the face: it names every module by design
            continue
        rel = str(f.relative_to(SRC.parent)) if SRC.parent in f.parents else str(f)
        imports += collect_imports(
            f.read_text(), importer, rel, modules, _face_exports(), f.name == "__init__.py"
        )
    return modules, imports


def find_cycle(edges: dict[str, dict[str, Import]]) -> list[str] | None:
    """One cycle of the directed graph (as [a, b, ..., a]), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, {})):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def import_graph(imports: list[Import]) -> dict[str, dict[str, Import]]:
    edges: dict[str, dict[str, Import]] = {}
    for imp in imports:
        if imp.target != imp.importer and imp.target != PACKAGE:
            edges.setdefault(imp.importer, {}).setdefault(imp.target, imp)
    return edges


def layer_violations(imports: list[Import]) -> list[str]:
    problems = []
    for imp in imports:
        if imp.via_face:
            defined = f" (defined in {imp.target}; import it from there)" if imp.target != PACKAGE else ""
            problems.append(f"{imp.where()} imports through the package face `llm_backbones`{defined}")
            if imp.target == PACKAGE:
                continue
        low, high = layer_of(imp.importer), layer_of(imp.target)
        if high > low:
            problems.append(
                f"{imp.where()}: {imp.importer} ({LAYERS[low]}, layer {low}) imports {imp.target} "
                f"({LAYERS[high]}, layer {high}), a higher layer"
            )
    return problems


def test_source_tree_is_read() -> None:
    """Guards the other tests against passing on nothing: every layer has modules and imports are found."""
    modules, imports = package_imports()
    layers_seen = {layer_of(m) for m in modules if m != PACKAGE}
    assert layers_seen == set(range(len(LAYERS))), sorted(LAYERS[i] for i in layers_seen)
    assert len(imports) > 50
    assert any(
        i.importer == "llm_backbones.app.cli" and i.target == "llm_backbones.core.registry" for i in imports
    )


def test_every_module_is_in_a_layer() -> None:
    modules, _ = package_imports()
    for module in sorted(modules - {PACKAGE}):
        layer_of(module)  # raises, naming the module, when it is in no layer


def test_no_import_runs_up_a_layer_or_through_the_face() -> None:
    _, imports = package_imports()
    problems = layer_violations(imports)
    assert not problems, "layer violations:\n" + "\n".join(problems)


def test_import_graph_has_no_cycle() -> None:
    _, imports = package_imports()
    edges = import_graph(imports)
    cycle = find_cycle(edges)
    if cycle:
        steps = "\n".join(
            f"  {a} -> {b}   ({edges[a][b].where()})" for a, b in zip(cycle, cycle[1:], strict=False)
        )
        pytest.fail(f"import cycle: {' -> '.join(cycle)}\n{steps}")


# The checker itself, on a small fake package: each rule must catch what it names.

FAKE = {
    "llm_backbones/__init__.py": "from llm_backbones._version import __version__\n",
    "llm_backbones/_version.py": "__version__ = '0'\n",
    "llm_backbones/errors.py": "",
    "llm_backbones/runtime/__init__.py": "",
    "llm_backbones/runtime/gen.py": "from llm_backbones.errors import X\n",
    "llm_backbones/core/__init__.py": "",
    "llm_backbones/core/backbones/__init__.py": "",
    "llm_backbones/core/backbones/files.py": "",
    "llm_backbones/core/registry.py": """
        def lazy():
            from llm_backbones.training import loop  # up, inside a function
        from . import reg2
    """,
    "llm_backbones/core/reg2.py": """
        from llm_backbones.core.backbones import files
        import llm_backbones.core.registry
    """,
    "llm_backbones/training/__init__.py": "",
    "llm_backbones/training/loop.py": """
        from llm_backbones import get_spec
        from ..core.backbones.files import f
    """,
    "llm_backbones/app/cli.py": "import importlib\nimportlib.import_module('llm_backbones.errors')\n",
}


@pytest.fixture
def fake_src(tmp_path: Path) -> Path:
    for rel, text in FAKE.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(textwrap.dedent(text))
    return tmp_path


def test_checker_finds_every_kind_of_import(fake_src: Path) -> None:
    _, imports = package_imports(fake_src)
    got = {
        (i.importer.removeprefix("llm_backbones."), i.target.removeprefix("llm_backbones."), i.line)
        for i in imports
    }
    assert got == {
        ("runtime.gen", "errors", 1),
        ("core.registry", "training.loop", 3),
        ("core.registry", "core.reg2", 4),
        ("core.reg2", "core.backbones.files", 2),
        ("core.reg2", "core.registry", 3),
        ("training.loop", "core.registry", 2),  # through the face, resolved by _EXPORTS
        ("training.loop", "core.backbones.files", 3),
        ("app.cli", "errors", 2),
    }


def test_checker_reports_up_imports_face_imports_and_cycles(fake_src: Path) -> None:
    _, imports = package_imports(fake_src)
    problems = layer_violations(imports)
    assert problems == [
        f"{fake_src}/llm_backbones/core/registry.py:3: `from llm_backbones.training import loop`: "
        "llm_backbones.core.registry (core, layer 2) imports llm_backbones.training.loop "
        "(training, layer 6), a higher layer",
        f"{fake_src}/llm_backbones/training/loop.py:2: `from llm_backbones import get_spec` imports through "
        "the package face `llm_backbones` (defined in llm_backbones.core.registry; import it from there)",
    ]
    assert find_cycle(import_graph(imports)) == [
        "llm_backbones.core.reg2",
        "llm_backbones.core.registry",
        "llm_backbones.core.reg2",
    ]


def test_checker_rejects_a_module_outside_the_layers(fake_src: Path) -> None:
    (fake_src / "llm_backbones" / "utils.py").write_text("")
    modules, _ = package_imports(fake_src)
    with pytest.raises(AssertionError, match=r"llm_backbones\.utils is in no layer"):
        for module in sorted(modules - {PACKAGE}):
            layer_of(module)
