"""The serving path never imports the lab (stepfoley.lab: training, evaluation, mini-world,
demo). The lab may import the engine, never the reverse: a server must not load training code
or the mini-world to answer a request, and the lab can change without touching what is served.
Below the engine, the request model imports nothing of it."""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LAB = "stepfoley.lab"
# Folder -> the package it is mapped to (pyproject.toml), for every file on the serving path.
SERVING_FOLDERS = {"engine": "stepfoley.engine", "bridge": "stepfoley.bridge"}
# The serving files of the `stepfoley` package itself: the command line, `serve`, `generate`,
# `send`, and what they share with the engine (demo, eval and train import the lab in `run`).
SERVING_FILES = ["stepfoley/__init__.py", "stepfoley/__main__.py", "stepfoley/cli.py", "stepfoley/request.py",
                 "stepfoley/atomic.py", "stepfoley/commands/__init__.py", "stepfoley/commands/runtime.py",
                 "stepfoley/commands/serve.py", "stepfoley/commands/generate.py", "stepfoley/commands/send.py"]


def _serving_files() -> dict[Path, str]:
    """Each serving file -> its module name."""
    files = {}
    for folder, package in SERVING_FOLDERS.items():
        for path in sorted((REPO / folder).rglob("*.py")):
            parts = path.relative_to(REPO / folder).with_suffix("").parts
            files[path] = ".".join((package, *(parts[:-1] if parts[-1] == "__init__" else parts)))
    for name in SERVING_FILES:
        parts = Path(name).with_suffix("").parts
        files[REPO / name] = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
    return files


def imports_of(wanted: str, source: str, module: str, is_package: bool) -> list[str]:
    """'line: what' for every import of the package `wanted` in `source` (the code of `module`):
    import statements at any depth, relative ones resolved, and importlib.import_module /
    __import__ of a literal name."""
    found = []
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")[:len(package.split(".")) - node.level + 1] if node.level else []
            target = ".".join([*base, *([node.module] if node.module else [])])
            names = [target] + [f"{target}.{alias.name}" for alias in node.names]
        elif (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str)
              and getattr(node.func, "attr", getattr(node.func, "id", None)) in ("import_module", "__import__")):
            names = [node.args[0].value]
        if any(name == wanted or name.startswith(wanted + ".") for name in names):
            found.append(f"{node.lineno}: {names[0]}")
    return found


def test_no_serving_file_imports_the_lab():
    files = _serving_files()
    assert len(files) > 40 and all(path.is_file() for path in files)
    offenders = {str(path.relative_to(REPO)): hits for path, module in files.items()
                 if (hits := imports_of(LAB, path.read_text(encoding="utf-8"), module, path.name == "__init__.py"))}
    assert offenders == {}


def test_the_check_sees_every_form_of_import():
    """Each of these would pull the lab into a server; the static check must see all of them."""
    cache, ranking = "stepfoley.engine.features.cache", "stepfoley.engine.ranking"
    forms = [(cache, "import stepfoley.lab.miniworld"), (cache, "from stepfoley.lab import demo"),
             (cache, "from stepfoley import lab"), (cache, "from ...lab.evaluation import embedding"),
             (cache, "from ... import lab"), (ranking, "from ..lab import training"),
             (ranking, "def later():\n    from stepfoley.lab.evaluation.embedding import AudioEmbedding"),
             (ranking, "importlib.import_module('stepfoley.lab.demo')"), (ranking, "__import__('stepfoley.lab')")]
    for module, form in forms:
        assert imports_of(LAB, form, module, False), form
    harmless = [(cache, "from stepfoley.engine import labels"), (cache, "import stepfoley.laboratory"),
                (cache, "from ..lab import x"),  # stepfoley.engine.lab, not the lab
                (ranking, "from .audio_embedding import load_audio_embedding"),
                (ranking, "hint = 'see stepfoley.lab.evaluation'")]
    for module, form in harmless:
        assert not imports_of(LAB, form, module, False), form


def test_the_request_imports_nothing_of_the_engine():
    """The engine imports the request; the request, pure Python for the client, never the engine
    back, not even inside a function: the files a request names are the engine's to look at
    (engine.input_files)."""
    source = (REPO / "stepfoley" / "request.py").read_text(encoding="utf-8")
    assert imports_of("stepfoley.engine", source, "stepfoley.request", False) == []


def test_serving_imports_and_a_ranking_load_nothing_of_the_lab():
    """In a fresh interpreter: every engine and bridge module, the command line with all its
    subcommands' parsers, and a real ranking with the shipped judging embedding (the one lazy
    import the engine used to make into the lab's evaluation)."""
    code = textwrap.dedent("""
        import importlib, pkgutil, sys
        import numpy as np
        import stepfoley.bridge, stepfoley.engine
        for package in (stepfoley.engine, stepfoley.bridge):
            for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
                importlib.import_module(info.name)
        from stepfoley.cli import build_parser
        build_parser()
        import stepfoley.commands.generate, stepfoley.commands.serve

        from stepfoley.engine.embedded.text import EmbeddedTextEncoder
        from stepfoley.engine.ranking import RANKED_BY_EMBEDDING, judge_for, rank_takes

        class Model:
            model_id, text_encoder = "stepfoley-mini", EmbeddedTextEncoder()

        judge, reason = judge_for(Model())
        assert judge is not None, reason
        rng = np.random.default_rng(0)
        takes = [rng.standard_normal(16000).astype(np.float32) * 0.1 for _ in range(2)]
        ranking = rank_takes(takes, 16000, "rain falling", takes[0], judge)
        assert ranking.ranked_by == RANKED_BY_EMBEDDING, ranking
        print(sorted(name for name in sys.modules if name == "stepfoley.lab" or name.startswith("stepfoley.lab.")))
    """)
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"


def test_the_bridge_the_request_and_the_command_line_load_no_torch():
    """The bridge knows nothing of tensors, and `stepfoley send` (what REAPER runs for every job
    and every status poll) starts without loading torch: every bridge module, the request, the
    guidance registry and the command line with all its subcommands' parsers, in a fresh
    interpreter."""
    code = textwrap.dedent("""
        import importlib, pkgutil, sys
        import stepfoley.bridge
        for info in pkgutil.walk_packages(stepfoley.bridge.__path__, "stepfoley.bridge."):
            importlib.import_module(info.name)
        import stepfoley.request, stepfoley.engine.guidance, stepfoley.commands.send
        from stepfoley.cli import build_parser
        build_parser()
        print(sorted(name for name in sys.modules if name == "torch" or name.startswith("torch.")))
    """)
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"
