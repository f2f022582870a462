"""Writes reaper_scripts/index.xml, the ReaPack index, from the package header of
"StepFoley_Generate Foley track for time selection.lua" (@description, @version, @author,
@changelog, @provides, @about). Run after changing a header or the version:

    python reaper_scripts/make_index.py [--base-url URL]

`--base-url` is where the raw files are served (the folder holding this script); users add
BASE_URL/index.xml in ReaPack > Import repositories."""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from urllib.parse import quote
from xml.sax.saxutils import escape, quoteattr

HERE = Path(__file__).resolve().parent
PACKAGE = "StepFoley_Generate Foley track for time selection.lua"
DEFAULT_BASE_URL = "https://raw.githubusercontent.com/stepfoley/stepfoley/main/reaper_scripts"


def read_header(path: Path) -> dict:
    """The ReaPack tags of a script: single-line tags as strings, @provides and @about as lists."""
    tags: dict = {}
    current = None
    for line in path.read_text(encoding="utf-8").splitlines():
        m = re.match(r"^--\s*@(\w+)\s*(.*)$", line)
        if m:
            current = m.group(1)
            tags[current] = m.group(2).strip() if m.group(2).strip() else []
            continue
        m = re.match(r"^--(?: {2,3}(.*))?$", line)
        if m and isinstance(tags.get(current), list):
            tags[current].append((m.group(1) or "").rstrip())
            continue
        if not line.startswith("--"):
            break
        current = None
    return tags


def provided(tags: dict) -> list[tuple[str, str]]:
    """(kind, file) for each @provides line; kind is "main" or "nomain"."""
    out = []
    for line in tags.get("provides", []):
        m = re.match(r"^\[(\w+)\]\s+(.+)$", line.strip())
        if not m:
            raise ValueError(f"@provides line not understood: {line!r}")
        out.append((m.group(1), m.group(2)))
    return out


def rtf(lines: list[str]) -> str:
    body = "\\par\n".join(s.replace("\\", "\\\\").replace("{", "\\{").replace("}", "\\}").lstrip("# ")
                          for s in lines)
    return "{\\rtf1\\ansi\\deff0\n" + body + "\n}"


def build_index(base_url: str) -> str:
    tags = read_header(HERE / PACKAGE)
    url = lambda name: base_url.rstrip("/") + "/" + quote(name)  # noqa: E731
    sources = [f'        <source main="main">{escape(url(PACKAGE))}</source>']
    for kind, name in provided(tags):
        main = ' main="main"' if kind == "main" else ""
        sources.append(f"        <source file={quoteattr(name)}{main}>{escape(url(name))}</source>")
    return "\n".join([
        '<?xml version="1.0" encoding="utf-8"?>',
        '<index version="1" name="StepFoley">',
        '  <category name="Various">',
        f"    <reapack name={quoteattr(PACKAGE)} type=\"script\" desc={quoteattr(tags['description'])}>",
        "      <metadata>",
        f"        <description><![CDATA[{rtf(tags.get('about', []))}]]></description>",
        "      </metadata>",
        f"      <version name={quoteattr(tags['version'])} author={quoteattr(tags.get('author', ''))}>",
        f"        <changelog><![CDATA[{tags.get('changelog', '')}]]></changelog>",
        *sources,
        "      </version>",
        "    </reapack>",
        "  </category>",
        "</index>",
        "",
    ])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base-url", default=DEFAULT_BASE_URL)
    args = p.parse_args(argv)
    target = HERE / "index.xml"
    tmp = target.with_suffix(".xml.part")
    tmp.write_text(build_index(args.base_url), encoding="utf-8")
    tmp.replace(target)
    print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
