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
    editable install has a finder of its own, which comes first. Every command imports this
    package (`send` in a DAW must start fast): only os.path until a source tree is found."""
    import os.path
    import sys

    here = os.path.dirname(os.path.abspath(__file__))
    root = os.path.dirname(here)
    if os.path.isdir(os.path.join(here, "engine")) or not os.path.isfile(os.path.join(root, "pyproject.toml")):
        return

    class SourceTreeFinder:  # a meta path finder needs find_spec only
        def find_spec(self, name, path=None, target=None):
            import importlib.util

            package, _, folder = name.partition(".")
            if package != __name__ or folder not in SOURCE_FOLDERS:
                return None  # its subpackages are found through its own __path__
            init = os.path.join(root, SOURCE_FOLDERS[folder], "__init__.py")
            if not os.path.isfile(init):
                return None
            return importlib.util.spec_from_file_location(name, init,
                                                          submodule_search_locations=[os.path.dirname(init)])

    if not any(type(f).__name__ == "SourceTreeFinder" for f in sys.meta_path):
        sys.meta_path.append(SourceTreeFinder())


_find_mapped_folders_in_the_source_tree()
