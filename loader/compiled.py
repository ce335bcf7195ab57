"""The modules setup.py compiles with mypyc, and when to run their plain Python instead.

An editable install compiles them in place, and Python then imports the compiled module
even after its `.py` has been edited. Rather than run old code, a module whose source is
not what it was compiled from (setup.py records each source's SHA-256 beside the builds;
file times cannot tell, as a wheel's installer writes the .py after the .so), or
SLUICE_PURE_PYTHON=1, has all of them loaded from source, with a warning that says how
to recompile. All or none: compiled modules call one another
directly, so a source module beside compiled ones would leave two versions in use.
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import json
import os
import sys
import warnings
from pathlib import Path

# In import order (each imports only those before it); setup.py compiles these.
COMPILED_MODULES = (
    "rules.messages",
    "rules.schema",
    "rules.normalize",
    "encode.row_layout",
    "encode.encoded",
)
# The one library holding their code (setup.py's group_name), beside them in the package.
SHARED_LIBRARY = "_native__mypyc"
# Written by setup.py beside the builds: module -> SHA-256 of the source it was built from.
SOURCES_RECORD = "_compiled_sources.json"
_PACKAGE = Path(__file__).resolve().parent


def compiled_path(name: str, package: Path = _PACKAGE) -> Path | None:
    """The compiled build of loader.<name> (dotted: "rules.messages"), if there is one
    beside its source."""
    *folders, leaf = name.split(".")
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        path = package.joinpath(*folders, f"{leaf}{suffix}")
        if path.exists():
            return path
    return None


def source_path(name: str, package: Path = _PACKAGE) -> Path:
    """The plain Python of loader.<name> (dotted: "rules.messages")."""
    return package.joinpath(*name.split(".")).with_suffix(".py")


def stale_modules(package: Path = _PACKAGE) -> list[str]:
    """Modules whose compiled build cannot be used as it is: built from another version
    of their source, or missing (with its shared library, or the record of what was
    compiled) while other modules are built, as a build that failed part way leaves
    them."""
    built = {name: compiled_path(name, package) for name in COMPILED_MODULES}
    if not any(built.values()):
        return []
    library = compiled_path(SHARED_LIBRARY, package)
    try:
        recorded = json.loads((package / SOURCES_RECORD).read_text())
    except (OSError, ValueError):
        recorded = {}
    stale = []
    for name, path in built.items():
        source = source_path(name, package).read_bytes()
        if (
            path is None
            or library is None
            or recorded.get(name) != hashlib.sha256(source).hexdigest()
        ):
            stale.append(name)
    return stale


def running_compiled() -> bool:
    """Whether the hot path runs as mypyc's C (for benchmarks to say what they measured)."""
    module = sys.modules.get("loader.rules.normalize")
    return module is not None and not str(getattr(module, "__file__", "")).endswith(".py")


def use_source_when_needed() -> None:
    """Called by loader/__init__ before anything imports the compiled modules."""
    stale = stale_modules()
    forced = os.environ.get("SLUICE_PURE_PYTHON", "") not in ("", "0")
    if not stale and not (forced and any(compiled_path(n) for n in COMPILED_MODULES)):
        return
    if stale:
        warnings.warn(
            f"loader: the compiled build of {', '.join(stale)} is missing or was built from "
            "another version of its source; running the plain Python of every compiled "
            "module (run `pip install -e .` again to recompile)",
            stacklevel=3,
        )
    for name in COMPILED_MODULES:
        qualified = f"loader.{name}"
        if qualified in sys.modules:
            continue
        parent, _, leaf = qualified.rpartition(".")
        importlib.import_module(parent)  # its package first (an __init__ with no imports)
        spec = importlib.util.spec_from_file_location(qualified, source_path(name))
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[qualified] = module
        spec.loader.exec_module(module)
        setattr(sys.modules[parent], leaf, module)  # as an import would: loader.rules.<leaf>
