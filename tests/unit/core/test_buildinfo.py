"""The suite runs against the build that ships: the hot path compiled with mypyc, unless the tree was
built with TCPCOPY_NO_COMPILE=1 (then every hot module runs interpreted, and the suite says so)."""

from __future__ import annotations

import os
import re
import runpy
from pathlib import Path

import appliance.engine.table
from appliance.core import buildinfo
from appliance.core.buildinfo import COMPILED, COMPILED_SOURCES, INTERPRETED, build_info, compiled_modules

ROOT = Path(__file__).resolve().parents[3]


def test_the_hot_path_runs_as_built():
    if os.environ.get("TCPCOPY_NO_COMPILE", "") not in ("", "0"):
        assert build_info() == INTERPRETED
        assert appliance.engine.table.__file__.endswith(".py")
    else:
        # `make setup` compiled them (an editable install: the .so files beside the sources win on import);
        # in a tree nobody built, run the suite with TCPCOPY_NO_COMPILE=1
        assert build_info() == COMPILED, "the hot path is not compiled: run `make setup`"
        assert appliance.engine.table.__file__.endswith(".so")


def test_a_partly_compiled_build_names_the_interpreted_modules(monkeypatch):
    monkeypatch.setattr(buildinfo, "is_compiled", lambda module: module != "appliance.engine.table")
    assert build_info() == "partly compiled (interpreted: appliance.engine.table)"


def test_every_listed_source_exists_and_setup_py_reads_the_same_list():
    assert all((ROOT / path).is_file() for path in COMPILED_SOURCES)
    assert len(set(compiled_modules())) == len(COMPILED_SOURCES)
    assert runpy.run_path(str(ROOT / "appliance" / "core" / "buildinfo.py"))["COMPILED_SOURCES"] == COMPILED_SOURCES


def test_the_makefiles_pattern_finds_every_compiled_source():
    # the Makefile's stamp depends on these files through a sed pattern over buildinfo.py
    makefile = (ROOT / "Makefile").read_text()
    assert "appliance/core/buildinfo.py" in makefile
    text = (ROOT / "appliance" / "core" / "buildinfo.py").read_text()
    assert tuple(re.findall(r'^    "(appliance/[^"]*\.py)",$', text, re.MULTILINE)) == COMPILED_SOURCES
