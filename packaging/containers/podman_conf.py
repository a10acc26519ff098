"""Make rootful podman 4.3 run containers on this kind of host: add the settings it needs to
containers.conf, keeping every other setting. Idempotent; the file is rewritten only when a setting
is missing. Run as root by `make packaging-setup`.

Needed because (measured on Debian 12 with a cgroup v1 hybrid and no CAP_SYS_RESOURCE): the default
ulimits cannot be raised, crun is not installed (runc is), the systemd cgroup manager and the journald
events logger need systemd as PID 1.
"""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path

REQUIRED = {
    "containers": {"default_ulimits": ["nofile=20000:20000", "nproc=32768:32768"]},
    "engine": {"runtime": "runc", "cgroup_manager": "cgroupfs", "events_logger": "file"},
}


def _value(v: object) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, list):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {v!r}")


def _write(doc: dict, prefix: str = "") -> list[str]:
    lines = [f"{k} = {_value(v)}" for k, v in doc.items() if not isinstance(v, dict)]
    for k, v in doc.items():
        if isinstance(v, dict):
            lines += ["", f"[{prefix}{k}]", *_write(v, f"{prefix}{k}.")]
    return lines


def main(path: str) -> int:
    conf = Path(path)
    doc = tomllib.loads(conf.read_text()) if conf.exists() else {}
    added = []
    for table, keys in REQUIRED.items():
        have = doc.setdefault(table, {})
        for key, value in keys.items():
            if key not in have:          # an explicit setting of the admin's is kept
                have[key] = value
                added.append(f"{table}.{key}")
    if not added:
        return 0
    conf.parent.mkdir(parents=True, exist_ok=True)
    if conf.exists():
        conf.with_name(conf.name + ".orig").write_bytes(conf.read_bytes())
    conf.write_text("# merged by tcpcopy-py packaging/containers/podman_conf.py\n"
                    + "\n".join(_write(doc)).lstrip("\n") + "\n")
    print(f"{conf}: added {', '.join(added)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "/etc/containers/containers.conf"))
