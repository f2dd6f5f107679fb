"""The package's layers, as data: a module imports only from its own layer and the layers
below it, and the imports form no circle. docs/architecture.md draws the same table; a new
module gets a row here (the test names any module without one)."""
import ast
import pathlib

import oqat

PACKAGE = pathlib.Path(oqat.__file__).parent

LAYERS = [  # lowest first
    ("values and checks", {"checkpoint", "config", "quant", "requant", "precision", "space", "layout", "data",
                           "distributed", "faults", "machine", "oqa"}),
    ("networks and their costs", {"layers", "exact", "subnet", "calibrate", "supernet", "cost", "budget",
                                  "packed", "runtime", "latency_model"}),  # runtime/: a subnet's C runtime, one package
    ("file formats", {"files", "records"}),
    ("run settings", {"experiment"}),
    ("training, search and analysis", {"evaluate", "inherit", "predictor", "search", "train", "analysis"}),
    ("deployment", {"export", "deploy", "latency", "preprocess"}),
    ("the run", {"report", "pipeline"}),
    ("entry points", {"cli", "__main__", "__init__"}),
]
LAYER = {module: i for i, (_, modules) in enumerate(LAYERS) for module in modules}


def _imports(path: pathlib.Path) -> set[str]:
    """The top-level oqat modules (or subpackages) a module imports, at its top or inside functions."""
    inside = path.parent != PACKAGE  # a subpackage's module: `..x` is oqat.x, `.x` its own package
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 1 + inside:
            found |= {node.module} if node.module else {a.name for a in node.names}
    return {m.split(".")[0] for m in found}


def _modules() -> dict[str, set[str]]:
    """Each top-level module, and each subpackage as one module, with what it imports."""
    graph = {p.stem: _imports(p) for p in PACKAGE.glob("*.py")}
    for package in (p.parent for p in PACKAGE.glob("*/__init__.py")):
        graph[package.name] = set().union(*(_imports(p) for p in package.rglob("*.py")))
    return graph


def test_every_module_imports_only_from_its_layer_or_below():
    graph = _modules()
    assert set(graph) <= set(LAYER), f"modules without a layer in LAYERS: {sorted(set(graph) - set(LAYER))}"
    upward = [f"{m} ({LAYERS[LAYER[m]][0]}) imports {d} ({LAYERS[LAYER[d]][0]})"
              for m, deps in graph.items() for d in deps if d in LAYER and LAYER[d] > LAYER[m]]
    assert not upward, "imports from a higher layer: " + "; ".join(upward)


def test_the_package_imports_form_no_circle():
    graph = {m: deps for m, deps in _modules().items() if m not in ("__init__", "__main__")}
    done, stack = set(), []

    def visit(module):
        assert module not in stack, "import circle: " + " -> ".join(stack[stack.index(module):] + [module])
        if module in done or module not in graph:
            return
        stack.append(module)
        for dep in graph[module]:
            visit(dep)
        stack.pop()
        done.add(module)

    for module in graph:
        visit(module)
