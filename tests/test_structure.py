"""The shape of the code, read from the sources with ``ast`` (nothing is imported or run).

* Training code (``biaskd``) never imports the analysis: the dependency runs one way,
  analysis -> biaskd, and the analysis reaches the training stack only through a few plain
  modules (``ANALYSIS_MAY_IMPORT``).
* No import cycle among the modules of both packages, imports inside functions included (those
  put off an import until it is needed, e.g. the recipes' training stack or the CLI's driver;
  they may not close a cycle either).
* biaskd's layers import downwards only (``NEVER_IMPORTS``): the record never imports the run
  lifecycle, neither imports the command-line tools, nothing but the benchmarks imports the
  benchmarks; a top-level module that keeps a command's name only hands over to its tool.
* No source file longer than ``MAX_LINES`` unless its opening line says why.
* The README's Layout section names every module file of both packages (of biaskd's layers too:
  ``LISTED_SUBPACKAGES``), and no other.
* No analysis module names a task, a scenario or an architecture (:data:`NAMES_MAY_APPEAR`).
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("biaskd", "analysis")

#: the biaskd modules analysis may import: errors; the record (the run-dir format and its reader, the
#: sweep folder's format, a search's objective); metric and pairwise-measure definitions; the rebuild
#: of a finished run (the one way into models and data), OOD transform names, optional extras, the
#: W&B mode, scenarios and modes
ANALYSIS_MAY_IMPORT = {
    "biaskd", "biaskd.errors", "biaskd.record", "biaskd.record.schema", "biaskd.record.artifacts",
    "biaskd.record.sweep", "biaskd.record.optimized_metric", "biaskd.metrics", "biaskd.pairwise",
    "biaskd.run.rebuild", "biaskd.data.ood", "biaskd.extras", "biaskd.wandb_logging", "biaskd.scenario", "biaskd.modes",
}

#: the layers of biaskd/ (docs/design.md, "Layout"): each subpackage -> the subpackages it never
#: imports. The record is plain code under the run lifecycle; the tools start runs, never the reverse;
#: the benchmarks are on top of everything.
NEVER_IMPORTS = {
    "biaskd.record": ("biaskd.run", "biaskd.tools", "biaskd.bench"),
    "biaskd.run": ("biaskd.tools", "biaskd.bench"),
    "biaskd.tools": ("biaskd.bench",),
}

#: top-level modules that only keep a command's name (``python -m biaskd.rerun``, the console script
#: ``biaskd.cli:main`` of an earlier install): each imports its tool and nothing else
COMMAND_NAMES = {"biaskd.cli": "biaskd.tools.cli", "biaskd.rerun": "biaskd.tools.rerun",
                 "biaskd.verify": "biaskd.tools.verify"}

#: biaskd's own subpackages whose every module file the README's Layout names (the others are
#: named as folders: one file per model, objective, mode, task)
LISTED_SUBPACKAGES = ("run", "record", "tools", "bench")


def module_files() -> dict[str, Path]:
    """Dotted module name -> source file, for every module of both packages."""
    mods = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            mods[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return mods


def imported_names(path: Path, module: str) -> set[str]:
    """Every module name an ``import`` in the file names (at any depth: inside functions too);
    ``from pkg import name`` counts as ``pkg.name``, which :func:`import_graph` resolves."""
    names = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the file's package upwards
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            names |= {base} | {f"{base}.{a.name}" for a in node.names}
    return names


def import_graph() -> dict[str, set[str]]:
    """Module -> the project modules it imports (each name resolved to its longest module prefix)."""
    mods = module_files()

    def resolve(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    graph = {}
    for mod, path in mods.items():
        deps = {resolve(n) for n in imported_names(path, mod)} - {None, mod}
        graph[mod] = deps
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle (its modules in order, the first repeated at the end), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                return stack[stack.index(dep):] + [dep]
            if dep not in state:
                found = visit(dep)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_the_graph_sees_imports_inside_functions():
    graph = import_graph()
    assert "biaskd.run.rebuild" in graph["analysis.basins"]  # imported inside a function there
    assert "biaskd.run.train" in graph["biaskd.tools.cli"]  # likewise


def test_training_code_never_imports_the_analysis():
    offenders = sorted(f"{mod} imports {dep}" for mod, deps in import_graph().items() if mod.startswith("biaskd")
                       for dep in deps if dep.split(".")[0] == "analysis")
    assert not offenders, offenders


def test_analysis_reaches_training_code_only_through_plain_modules():
    offenders = sorted(f"{mod} imports {dep}" for mod, deps in import_graph().items()
                       if mod.startswith("analysis") for dep in deps
                       if dep.split(".")[0] == "biaskd" and dep not in ANALYSIS_MAY_IMPORT)
    assert not offenders, offenders


def _within(mod: str, pkg: str) -> bool:
    return mod == pkg or mod.startswith(pkg + ".")


def test_the_layers_of_biaskd_import_downwards_only():
    graph = import_graph()
    offenders = sorted(f"{mod} imports {dep}" for pkg, above in NEVER_IMPORTS.items()
                       for mod, deps in graph.items() if _within(mod, pkg)
                       for dep in deps if any(_within(dep, a) for a in above))
    assert not offenders, offenders


def test_only_the_commands_import_the_tools_and_only_the_benchmarks_import_the_benchmarks():
    graph = import_graph()
    offenders = sorted(f"{mod} imports {dep}" for mod, deps in graph.items() for dep in deps
                       if (_within(dep, "biaskd.tools") and not _within(mod, "biaskd.tools")
                           and not _within(mod, "biaskd.bench") and mod not in COMMAND_NAMES)
                       or (_within(dep, "biaskd.bench") and not _within(mod, "biaskd.bench")))
    assert not offenders, offenders


def test_a_command_name_only_hands_over_to_its_tool():
    graph = import_graph()
    for name, tool in COMMAND_NAMES.items():
        assert graph[name] == {tool}, f"{name} imports {sorted(graph[name])}, only {tool} expected"


def test_no_import_cycle_among_the_modules():
    assert find_cycle(import_graph()) is None, " -> ".join(find_cycle(import_graph()))


@pytest.mark.parametrize("graph, cycle", [
    ({"a": {"b"}, "b": {"c"}, "c": {"a"}}, ["a", "b", "c", "a"]),
    ({"a": {"b"}, "b": set(), "c": {"a", "b"}}, None),
])
def test_find_cycle(graph, cycle):
    assert find_cycle(graph) == cycle


#: longest a source file may be; a longer one says why in its opening line (with this phrase)
MAX_LINES = 500
KEPT_WHOLE = "kept in one file"


def test_no_source_file_is_longer_than_the_limit_without_saying_why():
    long = []
    for path in module_files().values():
        lines = path.read_text().splitlines()
        if len(lines) > MAX_LINES and not (lines and KEPT_WHOLE in lines[0]):
            long.append(f"{path.relative_to(ROOT)}: {len(lines)} lines")
    assert not long, long


def layout_section() -> dict[str, str]:
    """The README's ``## Layout`` block, its text by top-level folder (``biaskd``, ``analysis``, ...)."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n## Layout\n", 1)[1].split("\n## ", 1)[0]
    block = section.split("```", 2)[1]
    parts: dict[str, str] = {}
    folder = None
    for line in block.splitlines():
        head = line.split(" ", 1)[0]
        if head.endswith("/") and not line.startswith(" "):
            folder = head.rstrip("/")
        if folder:
            parts[folder] = parts.get(folder, "") + line + "\n"
    return parts


@pytest.mark.parametrize("package", PACKAGES)
def test_readme_layout_names_every_module_of_the_package(package):
    import re

    text = layout_section()[package]
    named = set(re.findall(r"\b([a-z_][a-z0-9_]*\.py)\b", text))
    listed = [ROOT / package] + [ROOT / package / sub for sub in LISTED_SUBPACKAGES if package == "biaskd"]
    files = {p.name for folder in listed for p in folder.glob("*.py") if p.name != "__init__.py"}
    assert not files - named, f"in {package}/ but not in the README's Layout: {sorted(files - named)}"
    assert not named - files, f"in the README's Layout under {package}/ but not there: {sorted(named - files)}"
    subpackages = {p.parent.name for p in (ROOT / package).glob("*/__init__.py")}
    missing = {d for d in subpackages if not re.search(rf"\b{d}/", text)}
    assert not missing, f"subpackages of {package}/ the README's Layout does not name: {sorted(missing)}"


# -- the analysis names no task, scenario or architecture ---------------------------------------------
#: analysis modules that may hold such a name as a string, and why. None: a scenario is declared by
#: its task (conf/task/*.yaml ``bias``) and recorded in each run's meta.json; what is said of a
#: named scenario or architecture is data beside the code (analysis/reference_claims.yaml: the
#: paper's claims and their architectures; analysis/labels.yaml: titles and colours; conf/protocol/:
#: the declared comparisons), so a user's own task is analysed like the shipped ones. Docstrings and
#: comments may name them (they explain; they decide nothing).
NAMES_MAY_APPEAR: dict[str, str] = {}


def declared_names() -> dict[str, str]:
    """Every task, scenario and model name the configs declare -> the file that declares it: the
    ``name`` of conf/task/*.yaml and conf/model/*.yaml, a task's ``bias.scenario``, a recipe's
    top-level ``scenario`` (conf/experiment/*.yaml), and the ``_lm`` scenario of each task's LM setup."""
    names = {}
    for group in ("task", "model", "experiment"):
        for path in sorted((ROOT / "conf" / group).glob("*.yaml")):
            spec = yaml.safe_load(path.read_text()) or {}
            where = str(path.relative_to(ROOT))
            found = [spec.get("scenario")] if group == "experiment" else [spec.get("name")]
            if group == "task":
                found.append((spec.get("bias") or {}).get("scenario"))
            for name in (n for n in found if isinstance(n, str)):
                names[name] = where
                if group != "model":
                    names[f"{name}_lm"] = where
    return names


def named_in(source: str, names: dict[str, str], filename: str = "<source>") -> list[str]:
    """``line: 'name' (declared in file)`` for each string constant of ``source`` (docstrings
    aside) that equals one of ``names``."""
    tree = ast.parse(source, filename)
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                  and node.body and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
    return [f"{node.lineno}: {node.value!r} (declared in {names[node.value]})" for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings
            and node.value in names]


def test_the_configs_declare_the_names_the_guard_looks_for():
    names = declared_names()
    tasks = {p.stem for p in (ROOT / "conf" / "task").glob("*.yaml")}
    models = {p.stem for p in (ROOT / "conf" / "model").glob("*.yaml")}
    assert tasks | models <= set(names), sorted(tasks | models - set(names))
    assert len(names) > len(tasks) + len(models)  # the scenarios too


def test_no_analysis_module_names_a_task_a_scenario_or_an_architecture():
    names = declared_names()
    offenders = []
    for path in sorted((ROOT / "analysis").rglob("*.py")):
        where = str(path.relative_to(ROOT))
        if where not in NAMES_MAY_APPEAR:
            offenders += [f"{where}:{hit}" for hit in named_in(path.read_text(), names, where)]
    assert not offenders, ("the analysis reads the scenario a run recorded, or data beside the code; "
                           "these name one: " + "; ".join(offenders))


def test_the_guard_finds_names_in_code_and_not_in_docstrings():
    source = '''"""Reads mnist runs."""
def f(run):
    """For vision."""
    if run.task.startswith(("mnist", "other")):
        return {"lstm": 1}.get(run.model, f"{run.model} vs cnn")
'''
    hits = named_in(source, {"mnist": "a.yaml", "vision": "b.yaml", "lstm": "c.yaml", "cnn": "d.yaml"})
    assert hits == ["4: 'mnist' (declared in a.yaml)", "5: 'lstm' (declared in c.yaml)"]
