"""Compiles the hot path with mypyc; everything else is in pyproject.toml.

The modules listed in appliance/core/buildinfo.py (COMPILED_SOURCES) become one shared extension
plus a shim per module; the same .py files ship beside them and run interpreted wherever the
extension is absent. TCPCOPY_NO_COMPILE=1 builds pure Python. Without it a compile that fails
(mypy finds an error, no C compiler, no Python headers) fails the build: no silent fallback to
a slower package.
"""

from __future__ import annotations

import glob
import os
import runpy
import sys

from setuptools import setup

HERE = os.path.dirname(os.path.abspath(__file__))


def hot_sources() -> list[str]:
    # read by path: setup.py must not import the package it builds
    info = runpy.run_path(os.path.join(HERE, "appliance", "core", "buildinfo.py"))
    return list(info["COMPILED_SOURCES"])


def remove_inplace_builds() -> None:
    """An editable install of the compiled build left extension modules beside the sources, and they
    would win on import over the .py files of a pure build: remove them."""
    stale = glob.glob(os.path.join(HERE, "*__mypyc.*.so"))
    for source in hot_sources():
        stale += glob.glob(os.path.join(HERE, source.removesuffix(".py") + ".*.so"))
    for path in stale:
        print(f"setup.py: removing {os.path.relpath(path, HERE)} (a compiled build's)", file=sys.stderr)
        os.remove(path)


def ext_modules() -> list[object]:
    if os.environ.get("TCPCOPY_NO_COMPILE", "") not in ("", "0"):
        print("setup.py: TCPCOPY_NO_COMPILE is set: building pure Python (interpreted hot path)", file=sys.stderr)
        remove_inplace_builds()
        return []
    try:
        from mypyc.build import mypycify
    except ImportError as exc:
        sys.exit(f"setup.py: mypyc is not installed ({exc}); pyproject.toml's build-system.requires brings it, "
                 "or set TCPCOPY_NO_COMPILE=1 to build pure Python")
    os.chdir(HERE)      # mypycify takes paths relative to the project
    return list(mypycify(hot_sources(), opt_level="3"))


setup(ext_modules=ext_modules())
