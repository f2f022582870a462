"""StepFoley: step-by-step video-to-Foley with Negative Audio Guidance."""

__version__ = "0.1.0"

# where the docs the messages name (docs/...) are for an install without a checkout
DOCS_URL = "https://github.com/stepfoley/stepfoley/tree/main/docs"

# The top-level folders of the source tree that pyproject.toml's package-dir maps under this
# package (tests/test_packaging.py checks the two agree).
SOURCE_FOLDERS = {"engine": "engine", "bridge": "bridge", "bench": "benchmarks", "lab": "lab"}


def _find_mapped_folders_in_the_source_tree() -> None:
    """Where this package was imported from a source tree (a checkout or an unpacked sdist), as
    `python -m pytest` there does through the current folder, `stepfoley.engine` and the others
    are found in their top-level folders. An installed copy holds them inside this folder; an
    editable install has a finder of its own, which comes first."""
    import importlib.abc
    import importlib.util
    import sys
    from pathlib import Path

    here = Path(__file__).resolve().parent
    root = here.parent
    if (here / "engine").is_dir() or not (root / "pyproject.toml").is_file():
        return

    class SourceTreeFinder(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            package, _, folder = name.partition(".")
            if package != __name__ or folder not in SOURCE_FOLDERS:
                return None  # its subpackages are found through its own __path__
            location = root / SOURCE_FOLDERS[folder]
            if not (location / "__init__.py").is_file():
                return None
            return importlib.util.spec_from_file_location(name, location / "__init__.py",
                                                          submodule_search_locations=[str(location)])

    if not any(type(f).__name__ == "SourceTreeFinder" for f in sys.meta_path):
        sys.meta_path.append(SourceTreeFinder())


_find_mapped_folders_in_the_source_tree()
