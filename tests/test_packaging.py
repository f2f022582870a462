"""Packaging: one import name, `stepfoley`, with the top-level folders mapped under it."""

from __future__ import annotations

import os
import subprocess
import sys

from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python 3.11+
REPO = Path(__file__).resolve().parents[1]


def _setuptools_table() -> dict:
    with open(REPO / "pyproject.toml", "rb") as f:
        return tomllib.load(f)["tool"]["setuptools"]


def test_every_package_folder_is_listed_and_mapped_under_stepfoley():
    table = _setuptools_table()
    mapping = table["package-dir"]
    assert all(name == "stepfoley" or name.startswith("stepfoley.") for name in mapping)
    found = set()
    for name, folder in mapping.items():
        root = REPO / folder
        for init in root.rglob("__init__.py"):
            if "__pycache__" in init.parts:
                continue
            rel = init.parent.relative_to(root).parts
            found.add(".".join((name, *rel)))
    # a sub-folder of a mapped folder that is itself mapped is listed once, under its mapping
    assert found == set(table["packages"])


def test_the_source_tree_finds_its_mapped_folders_without_an_editable_install():
    """`python -m pytest` in an unpacked sdist puts its folder first on sys.path; with a
    non-editable install, that folder's stepfoley/ (which has no engine/ or bridge/) hid the
    installed package, and no test could be collected. Here: no site packages (-S), so no
    editable finder, the source tree alone."""
    from stepfoley import SOURCE_FOLDERS

    mapping = _setuptools_table()["package-dir"]
    assert {f"stepfoley.{name}": folder for name, folder in SOURCE_FOLDERS.items()} == {
        name: folder for name, folder in mapping.items() if name != "stepfoley"}
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import stepfoley.engine.codec, stepfoley.bridge, "
            "stepfoley.bench, stepfoley.lab.evaluation; print(stepfoley.bench.__file__)")
    done = subprocess.run([sys.executable, "-S", "-c", code, str(REPO)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert Path(done.stdout.strip()) == REPO / "benchmarks" / "__init__.py"


def test_the_old_top_level_names_are_not_importable_outside_the_checkout(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    for name in ("engine", "bridge", "benchmarks", "lab"):
        done = subprocess.run([sys.executable, "-c", f"import {name}"], cwd=tmp_path, env=env,
                              capture_output=True, text=True)
        assert done.returncode != 0 and "No module named" in done.stderr, name
    done = subprocess.run([sys.executable, "-c", "import stepfoley.engine.sampler, stepfoley.bridge.client, "
                           "stepfoley.bench.bench_sampler, stepfoley.lab.miniworld"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_every_subcommand_is_offered():
    """A subcommand module that cannot be imported must break the command loudly (it used to be
    left out of the parser without a word)."""
    from stepfoley.cli import SUBCOMMANDS, build_parser

    parser = build_parser()
    [sub] = [a for a in parser._actions if a.dest == "command"]
    assert list(sub.choices) == list(SUBCOMMANDS)


def test_no_optional_dependency_names_a_package_the_code_never_imports():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"].get("optional-dependencies", {})
    assert set(extras) == {"test"}  # the `clip` extra (open-clip-torch) was never imported: CLIP is our own


def test_ctrl_c_stops_a_command_without_a_traceback(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    import threading

    # a command that works for minutes: training the evaluation's classifier; Ctrl-C once it trains
    # (a fixed wait could land in the imports on a loaded machine)
    # SIGINT at its default in the command, whatever this run inherited: a shell starting a job
    # in the background without job control (`pytest &`, as a CI runner may) leaves it ignored
    done = subprocess.Popen([sys.executable, "-m", "stepfoley", "eval", "--train-classifier",
                             str(tmp_path / "c.safetensors")], stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    err, training = [], threading.Event()

    def read():
        for chunk in iter(lambda: done.stderr.read(64), ""):
            err.append(chunk)
            if "training the" in "".join(err[-3:]):
                training.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    assert training.wait(600), "".join(err)  # its data takes 95 s on an idle 2-core machine, more when loaded
    time.sleep(1)
    done.send_signal(signal.SIGINT)
    done.wait(timeout=60)
    reader.join(10)
    text = "".join(err)
    assert done.returncode == 130 and "stopped (Ctrl-C)" in text and "Traceback" not in text, text


def test_ctrl_c_while_the_commands_are_imported_ends_130_without_a_traceback(monkeypatch, capsys):
    # the window before a subcommand runs: Python's own handler used to end the process by the
    # signal (-2 to a DAW reading the exit code) with a traceback of the import
    from stepfoley import cli

    def interrupted_import():
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "build_parser", interrupted_import)
    assert cli.main(["send", "--help"]) == 130
    assert capsys.readouterr().err == "stepfoley: stopped (Ctrl-C); no unfinished file is left under its final name.\n"


def test_a_path_the_console_cannot_show_is_written_escaped(tmp_path):
    """Windows writes a piped command's output in its ANSI code page (cp1252 in western
    Europe), which has no 足: a report naming such a folder used to end the command with
    UnicodeEncodeError; the path is now written escaped and the command says what it found."""
    folder = tmp_path / "素材_足音"
    folder.mkdir()
    done = subprocess.run([sys.executable, "-m", "stepfoley", "weights", "check", str(folder)],
                          capture_output=True, env={**os.environ, "PYTHONIOENCODING": "cp1252"}, timeout=120)
    out, err = done.stdout.decode("cp1252"), done.stderr.decode("cp1252")
    assert "UnicodeEncodeError" not in err and "Traceback" not in err, err
    assert "\\u7d20\\u6750_\\u8db3\\u97f3" in out


def test_the_source_distribution_holds_every_tracked_file(tmp_path):
    """A user who builds from the sdist runs the same tests and installs the same REAPER actions:
    it used to hold the package and the test modules only, without conftest.py (whose fixtures
    keep the tests out of the user's own cache and state folders), the fake REAPER, the
    ReaScripts or the docs the messages point to."""
    import shutil
    import tarfile

    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("not a git checkout: the tracked files are unknown")
    pytest.importorskip("setuptools")
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, text=True,
                             check=True).stdout.split("\0")[:-1]
    present = [path for path in tracked if (REPO / path).is_file()]  # a deletion not yet committed
    source = tmp_path / "checkout"  # a copy: setuptools adds what an old *.egg-info in the tree lists
    for path in present:
        (source / path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / path, source / path)
    built = subprocess.run([sys.executable, "-c", "import sys; from setuptools import build_meta; "
                            "print(build_meta.build_sdist(sys.argv[1]))", str(tmp_path)],
                           cwd=source, capture_output=True, text=True)
    assert built.returncode == 0, built.stderr[-2000:]
    name = built.stdout.split()[-1]
    with tarfile.open(tmp_path / name) as sdist:
        inside = {m.name.split("/", 1)[1] for m in sdist.getmembers() if m.isfile() and "/" in m.name}
    missing = sorted(set(present) - inside)
    assert missing == [], missing
