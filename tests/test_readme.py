"""The README is true: every repository path it shows exists, and every command it shows parses.

* Paths: link targets, upper-case Markdown names (``README.md``), and the words of code spans and
  code blocks that start with one of the repository's own top-level folders or files
  (``conf/…``, ``results/…``, ``docs/…``); ``{a,b}``
  is expanded, a ``*`` must match something, and words holding a placeholder (``<run>``, ``…``)
  are left out.
* ``python -m X ARGS``: X imports and has a ``main``; where ``main`` reads its arguments with
  argparse, the README's arguments are parsed by it (and nothing runs).
* ``biaskd ARGS``: the overrides compose into a config (``hydra.compose``, as ``tests/tiny.py``
  does; the first value of a sweep) that :func:`biaskd.config.check` accepts, and a recipe that
  sweeps is run with ``-m`` or with every swept key set (else the command refuses it). Nothing
  trains.
"""
from __future__ import annotations

import argparse
import glob
import importlib
import inspect
import itertools
import re
import shlex
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser

from biaskd.tools.cli import CONF_DIR

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
def _top_level() -> set[str]:
    """The repository's top-level names (tracked files only: a local runs/ or .venv/ is not the repository's)."""
    import subprocess

    try:
        files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
        return {line.split("/")[0] for line in files.splitlines() if line and not line.startswith(".")}
    except (OSError, subprocess.CalledProcessError):  # not a git checkout
        return {p.name for p in ROOT.iterdir() if not p.name.startswith(".")}


TOP = _top_level()
PLACEHOLDER = re.compile(r"<[^>]*>|…|\.\.\.|\$")
#: commands that need files of the user's own (the README writes them first)
NEEDS_USER_FILES = ("hydra.searchpath",)


def code_blocks(text: str) -> list[str]:
    return re.findall(r"^```[a-z]*\n(.*?)^```", text, flags=re.S | re.M)


def code_spans(text: str) -> list[str]:
    prose = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    return [s.replace("\n", " ") for s in re.findall(r"(?<!`)`([^`]+)`(?!`)", prose)]


def expand_braces(word: str) -> list[str]:
    m = re.search(r"\{([^{}]*,[^{}]*)\}", word)
    if not m:
        return [word]
    return [w for alt in m.group(1).split(",") for w in expand_braces(word[:m.start()] + alt + word[m.end():])]


def repo_paths() -> list[str]:
    """Every word the README shows that names a file or folder of the repository."""
    words = set(re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", README))  # link targets
    for chunk in code_blocks(README) + code_spans(README):
        for word in re.split(r"[\s`'\"(),;=\[\]]+", chunk):
            words.add(word)
    words |= set(re.findall(r"\b[A-Z][A-Z_]*\.md\b", README))  # DESIGN.md, CHANGELOG.md: top-level docs, prose too
    found = set()
    for word in words:
        word = word.strip(".:")
        if not word or "://" in word or PLACEHOLDER.search(word):
            continue
        for w in expand_braces(word):
            head = w.split("/")[0]
            if head in TOP and (w != head or "/" in word or "." in head) or re.fullmatch(r"[A-Z][A-Z_]*\.md", w):
                found.add(w)
    return sorted(found)


def test_the_readme_shows_repository_paths():
    paths = repo_paths()
    assert {"results/README.md", "docs/design.md", "conf/callbacks/default.yaml"} <= set(paths), paths


@pytest.mark.parametrize("path", repo_paths())
def test_every_repository_path_the_readme_shows_exists(path):
    if "*" in path:
        assert glob.glob(str(ROOT / path)), f"README shows {path}: nothing matches"
    else:
        assert (ROOT / path).exists(), f"README shows {path}, which the repository does not have"


def commands() -> list[str]:
    """The ``biaskd …`` and ``python -m …`` commands of the code blocks and spans, continuation
    lines joined and comments dropped."""
    found = []
    for block in code_blocks(README):
        text = re.sub(r"\\\n\s*", " ", block)
        for line in text.splitlines():
            line = " ".join(line.split(" #")[0].split())
            if line.startswith(("biaskd ", "python -m ")):
                found.append(line)
    for span in code_spans(README):
        if span.startswith(("biaskd ", "python -m ")):
            found.append(" ".join(span.split()))
    return list(dict.fromkeys(found))


def _words(command: str) -> list[str]:
    """The command's words, a ``<placeholder>`` standing for one value and optional arguments
    shown in brackets given."""
    words = shlex.split(re.sub(r"<[^>]*>", "x", command))
    return [w[1:-1] if w.startswith("[") and w.endswith("]") else w for w in words]


PYTHON_COMMANDS = [c for c in commands() if c.startswith("python -m ")]
BIASKD_COMMANDS = [c for c in commands() if c.startswith("biaskd ")]


def test_the_readme_shows_commands():
    assert len(PYTHON_COMMANDS) >= 8 and len(BIASKD_COMMANDS) >= 20


class _Parsed(Exception):
    """Raised instead of running the command once its arguments are parsed."""


@pytest.mark.parametrize("command", PYTHON_COMMANDS)
def test_every_python_command_the_readme_shows_parses(command, monkeypatch):
    words = _words(command)
    module = importlib.import_module(words[2])
    if hasattr(module, "__path__"):  # a package: python -m runs its __main__
        module = importlib.import_module(f"{words[2]}.__main__")
    assert callable(getattr(module, "main", None)), f"{words[2]} has no main()"
    module = inspect.getmodule(module.main)  # where main is defined (a command's kept name hands over to it)
    if len(words) == 3 or "argparse" not in inspect.getsource(module) or not inspect.signature(module.main).parameters:
        return  # the command named in a sentence, or a main that reads no arguments
    original = argparse.ArgumentParser.parse_args

    def parse_then_stop(self, args=None, namespace=None):
        original(self, args, namespace)
        raise _Parsed

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
    with pytest.raises(_Parsed):
        module.main(words[3:])


def _first_values(overrides: list[str]) -> list[str]:
    """Each sweep override with its first value only (compose takes no sweep)."""
    out = []
    for o in OverridesParser.create().parse_overrides(overrides):
        if o.is_sweep_override():
            out.append(f"{o.get_key_element()}={next(iter(o.sweep_string_iterator()))}")
        else:
            out.append(o.input_line)
    return out


@pytest.mark.parametrize("command", BIASKD_COMMANDS)
def test_every_biaskd_command_the_readme_shows_composes(command, tmp_path):
    from biaskd.config import check

    words = _words(command)[1:]
    if "..." in words:
        pytest.skip(f"a placeholder stands for the command line: {command}")
    if any(w.startswith(NEEDS_USER_FILES) for w in words):
        pytest.skip("needs the user's own config folder (tests/test_extend.py builds one)")
    multirun = "-m" in words
    overrides = [w for w in words if w != "-m"]
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("config", overrides=[*_first_values(overrides), f"runs_dir={tmp_path}"],
                      return_hydra_config=True)
    params = cfg.hydra.sweeper.params or {}
    given = {o.get_key_element().lstrip("+~") for o in OverridesParser.create().parse_overrides(overrides)}
    assert multirun or not params or set(params) <= given, \
        f"{command}: the recipe sweeps {sorted(params)}; without -m the command refuses it"
    cfg = cfg.copy()
    with __import__("omegaconf").open_dict(cfg):
        del cfg["hydra"]
    check(cfg)


def test_paths_and_commands_are_found_as_the_readme_writes_them():
    assert expand_braces("results/{a,b}/x") == ["results/a/x", "results/b/x"]
    assert "biaskd experiment=mnist_reference model=mlp distill=none seed=1 experiment_name=mnist_drift " \
           "train.init_from=runs/reference/mnist_reference/mnist-mlp-cross-from-cnn-s1-<hash> " \
           "runs_dir=runs/reference" in BIASKD_COMMANDS  # a continued line, joined
    assert any(c.startswith("python -m analysis.reference --vision RUNS... --language RUNS...")
               for c in PYTHON_COMMANDS)  # a span across a line break
    assert not any(itertools.chain.from_iterable(PLACEHOLDER.findall(p) for p in repo_paths()))
