"""What each child of tcpcopyd is given: its spec, as JSON (never pickled), and its CPUs.

Specs are built in the supervisor (keyword-only) and rebuilt in the spawned child by
`spec_from_json`.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from typing import Any

from appliance.engine.params import EngineParams


@dataclass(frozen=True, slots=True, kw_only=True)
class CompareSettings:
    """Answer comparison (the [compare] keys); None in OnlineConfig when it is off."""

    head_bytes: int = 512
    ignore_headers: tuple[str, ...] = ()
    latency_factor: float = 2.0
    latency_floor: float = 0.010           # seconds
    differences_file: str = ""
    differences_max_bytes: int = 100 << 20


@dataclass(frozen=True, slots=True, kw_only=True)
class CaptureSpec:
    index: int
    interface: str
    bpf: str
    shards: int
    run_dir: str
    cpus: tuple[int, ...] = ()
    snaplen: int = 262144            # whole GSO/TSO super-packets (up to 64 KiB + link header)
    buffer_bytes: int = 128 << 20    # kernel ring; G1 was a ring of ~250 packets
    block_timeout_ms: int = 5        # capture latency only: requests are paced downstream
    batch_max: int = 512
    answers_of: str = ""             # compare: the transfers whose online answers are captured too


@dataclass(frozen=True, slots=True, kw_only=True)
class RewriteSpec:
    index: int
    shards: int
    run_dir: str
    transfers: str
    engine: EngineParams = field(default_factory=EngineParams)
    cpus: tuple[int, ...] = ()
    sample_rate: float = 1.0
    client_pool: tuple[str, ...] = ()
    copies: int = 1
    intercepts: tuple[str, ...] = ()
    secret_key: str = ""                 # empty: plaintext (insecure = true)
    intercept_public_key: str = ""
    verify_midstream: bool = False       # live capture on the online host: see SessionTable.accepted_online
    compare: CompareSettings | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ReaderSpec:
    run_dir: str
    shards: int
    transfers: str
    files: tuple[str, ...]
    speed: float = 1.0               # 0: as fast as the workers take it
    max_gap_ms: float = 0.0          # 0: keep every idle gap
    total_packets: int = 0
    progress: bool = False
    cpus: tuple[int, ...] = ()
    answers: bool = False            # compare: the online server's answers in the files go to the workers too


SPECS: dict[str, type] = {c.__name__: c for c in (CaptureSpec, RewriteSpec, ReaderSpec)}


def spec_to_json(spec: Any) -> str:
    return json.dumps({"type": type(spec).__name__, "fields": dataclasses.asdict(spec)})


def spec_from_json(text: str) -> Any:
    obj = json.loads(text)
    cls = SPECS[obj["type"]]
    kwargs = dict(obj["fields"])
    if "engine" in kwargs:
        kwargs["engine"] = EngineParams(**kwargs["engine"])
    if kwargs.get("compare") is not None:
        fields: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs["compare"].items()}
        kwargs["compare"] = CompareSettings(**fields)
    for name, value in kwargs.items():
        if isinstance(value, list):
            kwargs[name] = tuple(value)
    return cls(**kwargs)


def cpu_plan(count: int, offset: int, pin: bool) -> list[tuple[int, ...]]:
    """CPU sets for `count` children, round-robin over the CPUs this process may use."""
    if not pin:
        return [() for _ in range(count)]
    cpus = sorted(os.sched_getaffinity(0))
    return [(cpus[(offset + i) % len(cpus)],) for i in range(count)]
