"""Property test of configuration loading: any TOML value of any type, under any key of either
program's table (and any text after any flag), ends in a config or a ConfigError, never another
exception. Both are what tcpcopyd and interceptd turn into exit code 78, or SIGHUP into a warning."""

from __future__ import annotations

import datetime
import math
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from appliance.config import keys as config_settings
from appliance.config.keys import INTERCEPT, ONLINE, Setting
from appliance.config.loader import intercept_config, load, online_config
from appliance.core.errors import ConfigError

FUZZ = settings(max_examples=300, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

# what each table needs to load at all; the fuzzed key replaces its entry
ONLINE_BASE = {"tcpcopyd.transfer": "8080-198.18.0.3:8080", "tcpcopyd.intercepts": ["198.18.0.4"],
               "security.insecure": True}
INTERCEPT_BASE = {"interceptd.filter": "tcp and src port 8080", "security.insecure": True}

TRICKY = st.sampled_from([
    "", "auto", "inf", "nan", "-1", "0", "1e999", "８０８０", "٨٠٨٠", "²", "\0", "a\0b", "*", "lo", "any",
    "0.0.0.0/0", "10.0.0.0/8", "198.18.1.x", "198.18.0.999", "[::1]:36524", "8080-198.18.0.3:8080",
    "8080-198.18.0.3:8080,8080-198.18.0.3:8080", "198.18.0.4:٨٠٨٠", "tcp and (", "tcp port 99999",
    "debug", "true", "yes", "/nonexistent/key", "/dev/zero", "/", "127.0.0.1:9466", "x" * 300,
])
# one value of each TOML type, and the numbers at the edges of int() and float()
EDGES: list[Any] = [
    math.inf, -math.inf, math.nan, 1e308, -0.0, 0.5, 2 ** 63, -(2 ** 63), 10 ** 400, 0, -1, True,
    "", "x", "\0", "８０８０", datetime.datetime(1979, 5, 27, 7, 32, tzinfo=datetime.UTC),
    datetime.date(1979, 5, 27), datetime.time(7, 32), [], [1], ["a", 1], [[[]]], {}, {"a": 1}, {"a": {"b": []}},
]
SCALARS = st.one_of(
    st.sampled_from(EDGES), st.booleans(), st.integers(), st.integers(min_value=-(2 ** 70), max_value=2 ** 70),
    st.integers(0, 2000),
    st.floats(allow_nan=True, allow_infinity=True), st.floats(0, 1000), st.text(max_size=30), TRICKY,
    st.datetimes(), st.dates(), st.times(),
)
# mostly scalars (most keys take one), then arrays and tables of anything, nested
TOML_VALUES = st.one_of(SCALARS, SCALARS, SCALARS, st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8))


def toml_string(text: str) -> str:
    out = []
    for char in text:
        if char in '"\\':
            out.append("\\" + char)
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return ("inf" if value > 0 else "-inf") if math.isinf(value) else repr(value)
    if isinstance(value, str):
        return toml_string(value)
    if isinstance(value, (datetime.datetime, datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return "{" + ", ".join(f"{toml_string(k)} = {toml_value(v)}" for k, v in value.items()) + "}"


def toml_document(values: dict[str, Any]) -> str:
    sections: dict[str, list[str]] = {}
    for name, value in values.items():
        section, key = name.split(".")
        sections.setdefault(section, []).append(f"{key} = {toml_value(value)}")
    return "".join(f"[{section}]\n" + "\n".join(lines) + "\n" for section, lines in sections.items())


@pytest.fixture(scope="module")
def workdir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="tcpcopy-config-fuzz-") as path:
        yield Path(path)


@pytest.fixture(autouse=True)
def no_dns(monkeypatch: pytest.MonkeyPatch) -> None:
    """libpcap resolves host names in a filter (a bare word is one): keep the fuzz off the network by
    compiling only filters without letters for real and refusing the others, as an unknown name is."""
    real = config_settings.bpf_compiles
    def compiles(expression: str, kind: str) -> bool:
        return not re.search(r"[^\W\d_]", expression) and real(expression, kind)
    monkeypatch.setattr(config_settings, "bpf_compiles", compiles)


def no_flags(table: tuple[Setting, ...]) -> SimpleNamespace:
    return SimpleNamespace(**{s.name: None for s in table})


def only_config_errors(table: tuple[Setting, ...], build: Any, path: str | None,
                       args: SimpleNamespace) -> None:
    try:
        build(load(table, path, args))
    except ConfigError as exc:
        assert str(exc)


def _file_case(workdir: Path, base: dict[str, Any], setting: Setting, value: Any) -> str:
    path = workdir / "fuzz.toml"
    path.write_text(toml_document({**base, setting.name: value}))
    return str(path)


@pytest.mark.parametrize("table, base, build", [
    (ONLINE, ONLINE_BASE, lambda v: online_config(v, "file")), (INTERCEPT, INTERCEPT_BASE, intercept_config),
], ids=["tcpcopyd", "interceptd"])
def test_every_edge_value_under_every_key_is_a_config_or_a_config_error(workdir, table, base, build):
    for setting in table:
        for value in EDGES:
            path = _file_case(workdir, base, setting, value)
            only_config_errors(table, build, path, no_flags(table))


@FUZZ
@given(setting=st.sampled_from(ONLINE), value=TOML_VALUES)
def test_any_toml_value_under_any_tcpcopyd_key_is_a_config_or_a_config_error(workdir, setting, value):
    path = _file_case(workdir, ONLINE_BASE, setting, value)
    only_config_errors(ONLINE, lambda v: online_config(v, path), path, no_flags(ONLINE))


@FUZZ
@given(setting=st.sampled_from(INTERCEPT), value=TOML_VALUES)
def test_any_toml_value_under_any_interceptd_key_is_a_config_or_a_config_error(workdir, setting, value):
    path = _file_case(workdir, INTERCEPT_BASE, setting, value)
    only_config_errors(INTERCEPT, intercept_config, path, no_flags(INTERCEPT))


FLAG_TEXT = st.one_of(TRICKY, st.text(max_size=30),
                      st.text(alphabet=st.characters(codec="utf-8", categories=["Nd", "No", "Po"]),
                              max_size=8),
                      st.binary(max_size=12).map(lambda b: b.decode("utf-8", "surrogateescape")))


@FUZZ
@given(table=st.sampled_from([ONLINE, INTERCEPT]), data=st.data())
def test_any_text_after_any_flag_is_a_config_or_a_config_error(workdir, table, data):
    setting = data.draw(st.sampled_from([s for s in table if s.flags]))
    args = no_flags(table)
    base = ONLINE_BASE if table is ONLINE else INTERCEPT_BASE
    for name, value in base.items():
        setattr(args, name, ",".join(value) if isinstance(value, list) else str(value))
    setattr(args, setting.name, data.draw(FLAG_TEXT))
    build = (lambda v: online_config(v, "command line")) if table is ONLINE else intercept_config
    only_config_errors(table, build, None, args)
