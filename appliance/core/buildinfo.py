"""Which build of the hot path this process runs: compiled with mypyc, or interpreted.

The hot path (packet parsing and building, the flow key, the wire decoding, the session engine)
is plain typed Python that setup.py compiles with mypyc unless TCPCOPY_NO_COMPILE=1 is set at
build time; the same sources run interpreted. `COMPILED_SOURCES` is the one list of what is
compiled: setup.py reads it (without importing the package), the Makefile greps it (a change to
one of these files rebuilds the editable install), and `build_info()` checks it at run time.
Keep one path per line, in double quotes: the Makefile's pattern depends on it.
"""

from __future__ import annotations

import importlib.util

COMPILED_SOURCES = (
    "appliance/core/packet.py",
    "appliance/core/wire.py",
    "appliance/core/flowkey.py",
    "appliance/engine/clientmap.py",
    "appliance/engine/model.py",
    "appliance/engine/params.py",
    "appliance/engine/session.py",
    "appliance/engine/stream.py",
    "appliance/engine/table.py",
    "appliance/engine/transmit.py",
)

COMPILED = "compiled (mypyc)"
INTERPRETED = "interpreted"


def compiled_modules() -> tuple[str, ...]:
    """The dotted names of the modules in COMPILED_SOURCES."""
    return tuple(path.removesuffix(".py").replace("/", ".") for path in COMPILED_SOURCES)


def is_compiled(module: str) -> bool:
    """Whether `module` would be (or was) loaded from an extension module rather than its .py."""
    spec = importlib.util.find_spec(module)
    origin = spec.origin if spec is not None else None
    return origin is not None and not origin.endswith(".py")


def build_info() -> str:
    """"compiled (mypyc)" when every hot module is an extension module, "interpreted" when none is,
    otherwise "partly compiled (...)" naming the interpreted ones (a stale or broken build)."""
    interpreted = [m for m in compiled_modules() if not is_compiled(m)]
    if not interpreted:
        return COMPILED
    if len(interpreted) == len(COMPILED_SOURCES):
        return INTERPRETED
    return f"partly compiled (interpreted: {', '.join(interpreted)})"
