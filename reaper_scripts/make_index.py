"""Writes reaper_scripts/index.xml, the ReaPack index, adding the version of the package header
of "StepFoley_Generate Foley track for time selection.lua" (@description, @version, @author,
@changelog, @provides, @about) with every file pinned to one commit:

    python reaper_scripts/make_index.py --commit $(git rev-parse HEAD)

Every source URL is BASE/<commit>/reaper_scripts/<file>, never a branch, so a version always
installs exactly the files it was released with. The versions already in index.xml are kept
as they are (ReaPack shows each one's changelog and can install any of them); releasing a
version that is already there with another commit is refused unless --replace. Release step
(docs/reaper.md, "Releasing the actions"): commit the scripts with the new @version and
@changelog, then run this with that commit and commit index.xml."""

from __future__ import annotations

import argparse
import re
import sys
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote
from xml.sax.saxutils import escape, quoteattr

HERE = Path(__file__).resolve().parent
PACKAGE = "StepFoley_Generate Foley track for time selection.lua"
DEFAULT_REPO_URL = "https://raw.githubusercontent.com/stepfoley/stepfoley"
COMMIT = re.compile(r"[0-9a-f]{40}")


def read_header_text(text: str) -> dict:
    """The ReaPack tags of a script: single-line tags as strings, multi-line ones as lists."""
    tags: dict = {}
    current = None
    for line in text.splitlines():
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


def read_header(path: Path) -> dict:
    return read_header_text(path.read_text(encoding="utf-8"))


def provided(tags: dict) -> list[tuple[str, str]]:
    """(kind, file) for each @provides line; kind is "main" or "nomain"."""
    out = []
    for line in tags.get("provides", []):
        m = re.match(r"^\[(\w+)\]\s+(.+)$", line.strip())
        if not m:
            raise ValueError(f"@provides line not understood: {line!r}")
        out.append((m.group(1), m.group(2)))
    return out


def text_of(value) -> str:
    return "\n".join(value) if isinstance(value, list) else (value or "")


def rtf(lines: list[str]) -> str:
    body = "\\par\n".join(s.replace("\\", "\\\\").replace("{", "\\{").replace("}", "\\}").lstrip("# ")
                          for s in lines)
    return "{\\rtf1\\ansi\\deff0\n" + body + "\n}"


def version_key(name: str) -> tuple:
    return tuple(int(x) if x.isdigit() else x for x in re.split(r"[.-]", name))


@dataclass
class Version:
    name: str
    author: str
    changelog: str
    sources: list[tuple[str | None, bool, str]] = field(default_factory=list)  # (file, main, url)

    def xml(self) -> list[str]:
        lines = [f"      <version name={quoteattr(self.name)} author={quoteattr(self.author)}>",
                 f"        <changelog><![CDATA[{self.changelog}]]></changelog>"]
        for file, main, url in self.sources:
            attrs = (f" file={quoteattr(file)}" if file else "") + (' main="main"' if main else "")
            lines.append(f"        <source{attrs}>{escape(url)}</source>")
        lines.append("      </version>")
        return lines


def new_version(tags: dict, commit: str, repo_url: str = DEFAULT_REPO_URL) -> Version:
    """The header's version with every file at `commit` (40 hex digits, never a branch)."""
    if not COMMIT.fullmatch(commit):
        raise ValueError(f"--commit must be a full 40-digit commit hash, got {commit!r} (a branch moves)")
    url = lambda name: f"{repo_url.rstrip('/')}/{commit}/reaper_scripts/{quote(name)}"  # noqa: E731
    sources = [(None, True, url(PACKAGE))]
    sources += [(name, kind == "main", url(name)) for kind, name in provided(tags)]
    return Version(tags["version"], tags.get("author", ""), text_of(tags.get("changelog")), sources)


def load_versions(index_xml: str) -> list[Version]:
    """The versions an index already lists."""
    root = ET.fromstring(index_xml)
    out = []
    for v in root.iter("version"):
        sources = [(s.get("file"), s.get("main") == "main", s.text or "") for s in v.iter("source")]
        out.append(Version(v.get("name"), v.get("author", ""), (v.findtext("changelog") or ""), sources))
    return out


def render(tags: dict, versions: list[Version]) -> str:
    body = [line for v in sorted(versions, key=lambda v: version_key(v.name)) for line in v.xml()]
    return "\n".join([
        '<?xml version="1.0" encoding="utf-8"?>',
        '<index version="1" name="StepFoley">',
        '  <category name="Various">',
        f"    <reapack name={quoteattr(PACKAGE)} type=\"script\" desc={quoteattr(tags['description'])}>",
        "      <metadata>",
        f"        <description><![CDATA[{rtf(tags.get('about', []))}]]></description>",
        "      </metadata>",
        *body,
        "    </reapack>",
        "  </category>",
        "</index>",
        "",
    ])


def release(index_xml: str | None, tags: dict, commit: str, repo_url: str = DEFAULT_REPO_URL,
            replace: bool = False) -> str:
    """The index with the header's version at `commit` added to the versions it had."""
    version = new_version(tags, commit, repo_url)
    versions = load_versions(index_xml) if index_xml else []
    same = [v for v in versions if v.name == version.name]
    if same and same[0].sources != version.sources and not replace:
        raise ValueError(f"version {version.name} is already released with other files or another commit; "
                         "raise @version (or pass --replace if that release never reached anyone)")
    return render(tags, [v for v in versions if v.name != version.name] + [version])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--commit", required=True, help="the full hash of the commit that holds this version's files")
    p.add_argument("--repo-url", default=DEFAULT_REPO_URL,
                   help=f"where raw files are served, without the commit (default {DEFAULT_REPO_URL})")
    p.add_argument("--replace", action="store_true", help="replace a version already in the index")
    args = p.parse_args(argv)
    target = HERE / "index.xml"
    old = target.read_text(encoding="utf-8") if target.exists() else None
    try:
        text = release(old, read_header(HERE / PACKAGE), args.commit, args.repo_url, args.replace)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    tmp = target.with_suffix(".xml.part")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(target)
    print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
