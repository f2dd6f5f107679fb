"""The package's layers, as data: each subpackage of oqat is one layer row, a package imports
only from itself and the layers below it, and the imports form no circle. docs/architecture.md
draws the same table; a new package gets a row here (the test names any package without one),
and no module sits directly in oqat/ beside the entry points: the layout is the layers."""
import ast
import pathlib

import oqat

PACKAGE = pathlib.Path(oqat.__file__).parent

LAYERS = [  # lowest first
    ("values and checks", {"core"}),
    ("quantization", {"quant"}),
    ("search spaces and data", {"space", "data"}),
    ("networks and their costs", {"nets", "runtime"}),  # runtime/: a subnet's C runtime, one package
    ("file formats", {"files"}),
    ("run settings", {"config"}),
    ("training", {"train"}),
    ("search and analysis", {"search"}),
    ("deployment", {"deploy"}),
    ("the run", {"run"}),
    ("command line", {"cli"}),
    ("entry points", {"__init__", "__main__"}),
]
LAYER = {package: i for i, (_, packages) in enumerate(LAYERS) for package in packages}


def _imports(path: pathlib.Path) -> set[str]:
    """The oqat subpackages (or top-level modules) a module imports, at its top or inside functions."""
    here = path.relative_to(PACKAGE.parent).with_suffix("").parts[:-1]  # its package, e.g. ("oqat", "nets")
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = list(here[:len(here) - node.level + 1]) if node.level else []
            names = (node.module or "").split(".") if node.module else []
            target = base + [n for n in names if n]
            if not node.module:  # `from .. import x`: x is a module of the package named
                found |= {".".join(target + [a.name]) for a in node.names}
            else:
                found.add(".".join(target))
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
    return {m.split(".")[1] for m in found if m.startswith("oqat.")}


def _packages() -> dict[str, set[str]]:
    """Each subpackage, and each module directly in oqat/, with the subpackages it imports."""
    graph = {p.stem: _imports(p) for p in PACKAGE.glob("*.py")}
    for package in (p.parent for p in PACKAGE.glob("*/__init__.py")):
        graph[package.name] = set().union(*(_imports(p) for p in package.rglob("*.py"))) - {package.name}
    return graph


def test_every_package_imports_only_from_its_layer_or_below():
    graph = _packages()
    assert set(graph) <= set(LAYER), f"packages without a layer in LAYERS: {sorted(set(graph) - set(LAYER))}"
    upward = [f"{m} ({LAYERS[LAYER[m]][0]}) imports {d} ({LAYERS[LAYER[d]][0]})"
              for m, deps in graph.items() for d in deps if d in LAYER and LAYER[d] > LAYER[m]]
    assert not upward, "imports from a higher layer: " + "; ".join(upward)


def test_the_package_imports_form_no_circle():
    graph = {m: deps for m, deps in _packages().items() if m not in ("__init__", "__main__")}
    done, stack = set(), []

    def visit(package):
        assert package not in stack, "import circle: " + " -> ".join(stack[stack.index(package):] + [package])
        if package in done or package not in graph:
            return
        stack.append(package)
        for dep in graph[package]:
            visit(dep)
        stack.pop()
        done.add(package)

    for package in graph:
        visit(package)


def test_no_module_sits_directly_in_the_package_beside_the_entry_points():
    loose = sorted(p.name for p in PACKAGE.glob("*.py") if p.name not in ("__init__.py", "__main__.py"))
    assert not loose, f"modules outside the layer packages: {loose}; each belongs in the package of its layer"
