"""Validated, frozen settings for every process role, and their JSON form for child processes.

The supervisor builds an `OnlineConfig` once (from the command line for now); each child gets
only its own spec, serialised as JSON (never pickled) and rebuilt with `spec_from_json`.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from typing import Any

from appliance.engine.params import EngineParams
from appliance.errors import ConfigError

DEFAULT_RUN_DIR = "/run/tcpcopy-py"


@dataclass(frozen=True, slots=True)
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


@dataclass(frozen=True, slots=True)
class RewriteSpec:
    index: int
    shards: int
    run_dir: str
    transfers: str
    engine: EngineParams = field(default_factory=EngineParams)
    cpus: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class ResponsesSpec:
    shards: int
    run_dir: str
    intercepts: tuple[str, ...]
    cpus: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class OnlineConfig:
    transfers: str
    intercepts: tuple[str, ...]
    interfaces: tuple[str, ...]
    bpf: str
    workers: int
    run_dir: str
    engine: EngineParams
    pin_cpus: bool = True
    buffer_bytes: int = 128 << 20


@dataclass(frozen=True, slots=True)
class InterceptConfig:
    interfaces: tuple[str, ...]
    bpf: str
    bind: str = "0.0.0.0"
    port: int = 36524
    snaplen: int = 14 + 60 + 60      # link + IP + TCP headers with options, no payload
    buffer_bytes: int = 32 << 20
    batch_max: int = 512


SPECS: dict[str, type] = {c.__name__: c for c in (CaptureSpec, RewriteSpec, ResponsesSpec)}


def spec_to_json(spec: Any) -> str:
    return json.dumps({"type": type(spec).__name__, "fields": dataclasses.asdict(spec)})


def spec_from_json(text: str) -> Any:
    obj = json.loads(text)
    cls = SPECS[obj["type"]]
    kwargs = dict(obj["fields"])
    if "engine" in kwargs:
        kwargs["engine"] = EngineParams(**kwargs["engine"])
    for name, value in kwargs.items():
        if isinstance(value, list):
            kwargs[name] = tuple(value)
    return cls(**kwargs)


def validate_positive(name: str, value: float, maximum: float | None = None) -> float:
    if not value > 0 or (maximum is not None and value > maximum):
        bound = f" and at most {maximum}" if maximum is not None else ""
        raise ConfigError(f"{name} = {value!r}: must be greater than 0{bound}")
    return value


def validate_engine(p: EngineParams) -> EngineParams:
    if not 576 <= p.mtu <= 65535:
        raise ConfigError(f"mtu = {p.mtu}: must be 576-65535")
    if not 88 <= p.fake_syn_mss <= p.mtu - 40:
        raise ConfigError(f"mss = {p.fake_syn_mss}: must be 88-{p.mtu - 40}")
    for name in ("handshake_timeout", "syn_rto", "rto_min", "rto_max", "response_quiet", "max_lag",
                 "gap_timeout", "session_timeout", "keepalive_timeout", "linger"):
        validate_positive(name, getattr(p, name))
    if p.buffer_limit < 65536:
        raise ConfigError(f"buffer_limit = {p.buffer_limit}: must be at least 65536 bytes")
    return p


def cpu_plan(count: int, offset: int, pin: bool) -> list[tuple[int, ...]]:
    """CPU sets for `count` children, round-robin over the CPUs this process may use."""
    if not pin:
        return [() for _ in range(count)]
    cpus = sorted(os.sched_getaffinity(0))
    return [(cpus[(offset + i) % len(cpus)],) for i in range(count)]
