"""Build hook: compile the per-message hot path with mypyc when this machine can.

Everything else is declared in pyproject.toml. The modules below run once or more per
message in the reader processes; compiled, they take about a quarter less CPU per event
(valgrind, bench/'s archive). A machine without a C compiler, or SLUICE_PURE_PYTHON=1,
gets the same modules as plain Python: same behaviour, only slower.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_ext import build_ext

# Pure logic only (no I/O): what mypyc compiles must also run as plain Python.
COMPILED = [
    "loader/rules/messages.py",
    "loader/rules/normalize.py",
    "loader/encode/row_layout.py",
    "loader/rules/schema.py",
    "loader/encode/encoded.py",
]


class OptionalBuildExt(build_ext):
    """A failed compile leaves the pure-Python modules in place instead of failing the
    install: speed is optional, installing is not."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # noqa: BLE001 - any compiler failure
            _skipped(exc)
            return
        if self.extensions:
            self.record_sources()

    def record_sources(self) -> None:
        """What each compiled module was built from, beside the builds, so that
        loader/compiled.py can tell an edited module from its build. File times cannot:
        a wheel's installer writes the .py after the .so."""
        built = {}
        for source in COMPILED:
            name = ".".join(Path(source).with_suffix("").parts[1:])  # "rules.messages"
            if Path(self.get_ext_fullpath(f"loader.{name}")).exists():
                built[name] = hashlib.sha256(Path(source).read_bytes()).hexdigest()
        target = Path(self.get_ext_fullpath("loader._native__mypyc")).parent
        (target / "_compiled_sources.json").write_text(json.dumps(built, indent=1) + "\n")

    def build_extension(self, ext) -> None:  # type: ignore[no-untyped-def]
        try:
            super().build_extension(ext)
        except Exception as exc:  # noqa: BLE001 - any compiler failure
            _skipped(exc)


def _skipped(exc: Exception) -> None:
    print(f"sluice: not compiling the hot path ({exc}); using plain Python", file=sys.stderr)


def ext_modules() -> list:
    if os.environ.get("SLUICE_PURE_PYTHON"):
        return []
    try:
        from mypyc.build import mypycify
    except ImportError as exc:
        _skipped(exc)
        return []
    try:
        # A module the build environment lacks is Any to mypyc, which compiles calls into
        # it as ordinary calls. One shared library inside the package, not a top-level
        # module an editable install could not find.
        return mypycify(
            ["--ignore-missing-imports", *COMPILED], opt_level="3", group_name="loader._native"
        )
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - mypyc exits on type errors
        _skipped(exc)
        return []


setup(ext_modules=ext_modules(), cmdclass={"build_ext": OptionalBuildExt})
