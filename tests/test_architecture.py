"""The package's structure: properties a reader relies on that no behaviour test would notice."""

from __future__ import annotations

import ast
from pathlib import Path

import tier_openclip


def _package_roots() -> dict[str, Path]:
    """Import prefix -> folder, as the installed package maps them (kernels/ and data_prep/ are
    tier_openclip.kernels / tier_openclip.data_prep in a wheel and in a checkout alike)."""
    import tier_openclip.data_prep
    import tier_openclip.kernels

    return {
        "tier_openclip": Path(tier_openclip.__file__).parent,
        "tier_openclip.kernels": Path(tier_openclip.kernels.__file__).parent,
        "tier_openclip.data_prep": Path(tier_openclip.data_prep.__file__).parent,
    }


def _modules() -> dict[str, Path]:
    modules: dict[str, Path] = {}
    for prefix, root in _package_roots().items():
        for path in sorted(root.rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[0] in ("kernels", "data_prep") and prefix == "tier_openclip":
                continue  # a wheel holds them inside the package: named by their own prefix
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join([prefix, *parts])] = path
    return modules


def _import_targets(name: str, path: Path, known: set[str]) -> set[str]:
    """Every module ``name`` imports anywhere in its file (module level or inside functions),
    relative imports resolved: ``from a import b`` counts as importing a.b when that is a module, else a."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        else:
            continue
        found.update(targets)
    return found


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Modules of the package that ``name`` imports (``_import_targets`` within the package)."""
    # A module's own packages are initialised before it runs, so naming one (`from
    # tier_openclip.demo import __doc__` in demo/cli.py) starts no import: not an edge.
    return {t for t in _import_targets(name, path, known) if t in known and t != name and not name.startswith(t + ".")}


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, set(modules)) for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None (depth-first search, colours on the stack)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_find_cycle_finds_a_cycle_and_only_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_the_import_graph_sees_module_and_function_level_imports():
    graph = import_graph()
    assert "tier_openclip.openclip_adapter" in graph["tier_openclip.models"]  # module level, a package's __init__
    assert "tier_openclip.features" in graph["tier_openclip.evaluation.analyze"]  # inside a function
    assert "tier_openclip.kernels.reference" in graph["tier_openclip.entropy"]
    assert "tier_openclip.data_prep.images" in graph["tier_openclip.phantom.anatomy"]  # relative import
    assert "tier_openclip.demo" not in graph["tier_openclip.demo.cli"]  # its own package


def test_the_package_has_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def _dangling(targets: set[str], known: set[str]) -> set[str]:
    return {t for t in targets if (t == "tier_openclip" or t.startswith("tier_openclip.")) and t not in known}


def test_every_import_of_the_package_names_a_module_that_exists():
    """A module moved or renamed leaves no import behind, in the package, the tests or the
    benchmarks (a checkout's): many of them run only in a function, which a test may never reach."""
    modules = _modules()
    known = set(modules)
    files = {name: path for name, path in modules.items()}
    checkout = Path(tier_openclip.__file__).resolve().parents[1]
    for folder in (Path(__file__).parent, checkout / "benchmarks"):
        for path in sorted(folder.rglob("*.py")) if folder.is_dir() else ():
            files[f"{folder.name}/{path.relative_to(folder).as_posix()}"] = path  # absolute imports only
    dangling = {name: sorted(missing) for name, path in files.items() if (missing := _dangling(
        _import_targets(name if name in modules else "_outside_", path, known), known))}
    assert not dangling, dangling


def test_only_the_start_up_hook_and_the_entry_point_import_the_training_plugin():
    importers = {name for name, imported in import_graph().items() if "tier_openclip.training.plugin" in imported}
    # The wheel installs _startup.py as the top-level _tier_openclip_startup (the .pth hook), so in
    # an installed package it is not in tier_openclip's graph; in a checkout it is.
    assert importers - {"tier_openclip._startup"} == {"tier_openclip.train"}


# --- the layout: folder names tell the architecture (issue 23, item 4) ----------------------------

# The top level holds the entry points, the method and what every part shares; nothing else.
TOP_LEVEL_MODULES = {
    "__init__", "__main__", "train",  # the package, `python -m tier_openclip`, `python -m tier_openclip.train`
    "_startup",  # the start-up hook (installed as the top-level module _tier_openclip_startup)
    "loss", "entropy", "filip", "local_uniformity", "sentences", "features",  # the method
    "errors", "cli_common",  # the one-line errors, and the flags every command shares
}
# Everything else, by job. model_configs/ (JSON, no code) and, in a wheel, kernels/ and data_prep/
# sit beside them.
SUBPACKAGES = {
    "training",  # the open_clip plugin: --loss tier inside open_clip's training loop
    "models",  # registering and loading models, and the towers our configs name
    "evaluation",  # zero-shot, grounding, segmentation, analyze, heatmap
    "commands",  # the tier-openclip command line
    "hub",  # tier-openclip push
    "demo", "phantom",  # the CPU demo and its synthetic radiographs
    "openclip_adapter",  # every open_clip name and behaviour the package relies on
}
# The method reads without the rest: its modules import each other, these and nothing else.
METHOD = {"tier_openclip." + name for name in ("loss", "entropy", "filip", "local_uniformity", "sentences", "features")}
METHOD_MAY_IMPORT = ("tier_openclip.errors", "tier_openclip.openclip_adapter", "tier_openclip.kernels")


def _top_level() -> tuple[set[str], set[str]]:
    """(modules, packages) directly in tier_openclip's folder, as a checkout or a wheel holds them."""
    root = Path(tier_openclip.__file__).parent
    modules = {path.stem for path in root.glob("*.py")}
    packages = {path.parent.name for path in root.glob("*/__init__.py")} - {"kernels", "data_prep"}
    return modules, packages


def test_the_top_level_holds_only_the_entry_points_the_method_and_what_is_shared():
    modules, packages = _top_level()
    assert modules - TOP_LEVEL_MODULES == set(), "put a new module in the subpackage of its job (tests/test_architecture.py)"
    # _startup.py is not in a wheel (pyproject installs it as _tier_openclip_startup); all else is
    assert TOP_LEVEL_MODULES - {"_startup"} <= modules, TOP_LEVEL_MODULES - modules
    assert packages == SUBPACKAGES, packages ^ SUBPACKAGES


def unit_of(module: str) -> str:
    """The part of the package a module belongs to: its subpackage of tier_openclip (kernels and
    data_prep count as ones), or the top-level module itself."""
    parts = module.split(".")
    return ".".join(parts[:2])


def unit_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """Import edges between the package's parts (subpackages and top-level modules), inner edges dropped."""
    units: dict[str, set[str]] = {}
    for name, imported in graph.items():
        units.setdefault(unit_of(name), set()).update(unit_of(i) for i in imported if unit_of(i) != unit_of(name))
    return units


def test_unit_graph_joins_a_subpackages_modules():
    graph = {"tier_openclip.a.x": {"tier_openclip.a.y", "tier_openclip.b"}, "tier_openclip.a.y": set(),
             "tier_openclip.b": {"tier_openclip.a.y"}}
    assert unit_graph(graph) == {"tier_openclip.a": {"tier_openclip.b"}, "tier_openclip.b": {"tier_openclip.a"}}
    assert find_cycle(unit_graph(graph)) == ["tier_openclip.a", "tier_openclip.b", "tier_openclip.a"]


def test_no_import_circle_between_the_subpackages():
    """A module-level cycle is caught above; this also catches a circle through two modules each
    (evaluation.zeroshot -> training.x while training.plugin -> evaluation.zeroshot)."""
    units = unit_graph(import_graph())
    assert "tier_openclip.evaluation" in units["tier_openclip.training"]  # the graph sees the plugin's evaluators
    cycle = find_cycle(units)
    assert cycle is None, "import circle between parts of the package: " + " -> ".join(cycle)


def test_the_method_imports_none_of_the_rest():
    graph = import_graph()
    for name in sorted(METHOD):
        outside = {i for i in graph[name] if i not in METHOD and not i.startswith(METHOD_MAY_IMPORT)}
        assert not outside, f"{name} imports {sorted(outside)}: the method must read without training, models or commands"


def test_only_the_entry_point_imports_the_command_line():
    """The subcommands' parsers live with their code and are gathered by commands.cli; nothing
    but ``python -m tier_openclip`` goes the other way."""
    importers = {name for name, imported in import_graph().items()
                 if unit_of(name) != "tier_openclip.commands"
                 and any(unit_of(i) == "tier_openclip.commands" for i in imported)}
    assert importers == {"tier_openclip.__main__"}, importers


# --- one owner per data contract (issue 12, item 1) ----------------------------------------------


def _package_sources() -> dict[str, ast.Module]:
    """Every .py file of tier_openclip, its kernels and its data_prep (tests are not the package),
    parsed: "data_prep/eval_layout.py" (folder/path inside it) -> module."""
    import tier_openclip.data_prep
    import tier_openclip.kernels

    named: dict[Path, str] = {}  # resolved file -> name; kernels/ and data_prep/ by their own folder
    for label, module in (("data_prep", tier_openclip.data_prep), ("kernels", tier_openclip.kernels),
                          ("tier_openclip", tier_openclip)):
        root = Path(module.__file__).parent
        for path in sorted(root.rglob("*.py")):
            named.setdefault(path.resolve(), f"{label}/{path.relative_to(root).as_posix()}")
    return {name: ast.parse(path.read_text(encoding="utf-8"), str(path)) for path, name in sorted(named.items())}


def _docstrings(tree: ast.Module) -> set[int]:
    nodes = [tree, *(n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)))]
    return {id(n.body[0].value) for n in nodes
            if n.body and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}


def _string_constants(tree: ast.Module, text: str) -> int:
    """How many string literals in code (not docstrings) hold ``text``."""
    skip = _docstrings(tree)
    return sum(1 for n in ast.walk(tree)
               if isinstance(n, ast.Constant) and isinstance(n.value, str) and text in n.value and id(n) not in skip)


def _calls(tree: ast.AST, module: str, name: str) -> int:
    return sum(1 for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
               and n.func.attr == name and isinstance(n.func.value, ast.Name) and n.func.value.id == module)


def _cell_parsers(tree: ast.Module) -> list[str]:
    """Functions that parse a blank-or-number CSV cell (compare a value with "" and call float()),
    the shape of every CheXpert label-cell parser the package ever had."""
    found = []
    for function in (n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))):
        nodes = list(ast.walk(function))
        calls_float = any(isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == "float" for n in nodes)
        blank = any(isinstance(n, ast.Compare) and any(isinstance(c, ast.Constant) and c.value == "" for c in [n.left, *n.comparators])
                    for n in nodes)
        if calls_float and blank:
            found.append(function.name)
    return found


def test_the_evaluation_format_tag_is_defined_once():
    where = {path: count for path, tree in _package_sources().items()
             if (count := _string_constants(tree, "tier-openclip-eval/1"))}
    assert where == {"data_prep/eval_layout.py": 1}, where


def test_chexpert_label_cells_are_parsed_by_one_function():
    where = {path: names for path, tree in _package_sources().items() if (names := _cell_parsers(tree))}
    assert where == {"data_prep/chexpert.py": ["parse_chexpert_label"]}, where


def test_csv_files_are_written_by_one_writer():
    """csv.writer is called once, in the atomic writer; no other module builds a temporary name."""
    sources = _package_sources()
    writers = {path: count for path, tree in sources.items()
               if (count := _calls(tree, "csv", "writer") + _calls(tree, "csv", "DictWriter"))}
    assert writers == {"data_prep/atomic.py": 1}, writers
    temporaries = {path for path, tree in sources.items() if _string_constants(tree, ".tmp")}
    assert temporaries <= {"data_prep/atomic.py"}, temporaries


# --- small modules (issue 23) ----------------------------------------------------------------------

MAX_MODULE_LINES = 500
# The one exception: the kernel file keeps its one-op-per-file shape (Triton kernels + the Function).
LONG_BY_DESIGN = {"kernels/tier_entropy.py"}


def test_no_module_outside_the_tests_is_over_500_lines():
    import tier_openclip.data_prep
    import tier_openclip.kernels

    roots = {"data_prep": Path(tier_openclip.data_prep.__file__).parent,
             "kernels": Path(tier_openclip.kernels.__file__).parent, "tier_openclip": Path(tier_openclip.__file__).parent}
    benchmarks = Path(tier_openclip.__file__).resolve().parents[1] / "benchmarks"
    if benchmarks.is_dir():  # a checkout; a wheel has no benchmarks
        roots["benchmarks"] = benchmarks
    named: dict[Path, str] = {}  # resolved file -> name; in a wheel kernels/ and data_prep/ sit inside the package
    for label, root in roots.items():
        for path in sorted(root.rglob("*.py")):
            named.setdefault(path.resolve(), f"{label}/{path.relative_to(root).as_posix()}")
    lengths = {name: len(path.read_text(encoding="utf-8").splitlines()) for path, name in named.items()}
    assert len(lengths) > 50, sorted(lengths)  # the package was found
    long = {name: n for name, n in lengths.items() if n > MAX_MODULE_LINES and name not in LONG_BY_DESIGN}
    assert not long, f"modules over {MAX_MODULE_LINES} lines (split them by job): {long}"
