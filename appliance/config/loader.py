"""Loading the configuration: defaults, then the TOML file, then the command line, validated.

tcpcopyd builds an `OnlineConfig` once and interceptd an `InterceptConfig` (appliance.config.keys
lists every key); the children get only their own spec (appliance.config.specs). Runs in the
daemons' main processes, at start and on SIGHUP.
"""

from __future__ import annotations

import grp
import os
import stat
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from appliance.compare.turns import AssemblerSpec
from appliance.config.keys import Setting, auto_workers
from appliance.config.specs import CompareSettings
from appliance.core.errors import ConfigError
from appliance.engine.params import EngineParams

DEFAULT_RUN_DIR = "/run/tcpcopy-py"
MAX_CONFIG_BYTES = 16 << 20          # the sample is 5 KB; a full 65536-address client_pool list ~1.2 MB


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
    sample_rate: float = 1.0
    client_pool: tuple[str, ...] = ()
    copies: int = 1
    log_level: str = "info"
    metrics_listen: str = ""
    graceful_timeout: float = 5.0
    startsecs: float = 1.0
    startretries: int = 3
    source: str = "command line"
    control_group: str = ""
    user: str = ""
    offline: tuple[str, ...] = ()        # capture files to replay instead of capturing live
    speed: float = 1.0
    max_gap_ms: float = 0.0
    offline_tail: float = 30.0           # seconds to wait for sessions to finish after the files end
    secret_key: str = ""                 # empty: plaintext to interceptd (insecure = true)
    intercept_public_key: str = ""
    verify_midstream: bool = True        # forge SYNs only for connections this host's socket table holds
    compare: CompareSettings | None = None


HEADERS_SNAPLEN = 14 + 60 + 60       # link + IP + TCP headers with options, no payload
WHOLE_SNAPLEN = 64 + 65535           # compare mode: the largest IPv4 packet behind any link header


@dataclass(frozen=True, slots=True)
class InterceptConfig:
    """interceptd's settings. `compare`: the turn assembler's spec in compare mode, None when off
    (then interceptd does exactly what it did before compare mode existed)."""

    interfaces: tuple[str, ...]
    bpf: str
    bind: str = "0.0.0.0"
    port: int = 36524
    snaplen: int = HEADERS_SNAPLEN
    buffer_bytes: int = 32 << 20
    batch_max: int = 512
    log_level: str = "info"
    secret_key: str = ""                 # empty: plaintext (insecure = true)
    authorized_keys: str = ""
    user: str = ""
    compare: AssemblerSpec | None = None


Values = dict[str, Any]              # "section.key" -> value


def _read_text(path: str) -> str:
    """The file's text: a regular file (a FIFO would block a SIGHUP for ever), bounded, UTF-8."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except (OSError, ValueError) as exc:               # ValueError: a NUL in the path
        raise ConfigError(f"{path!r}: cannot read: {getattr(exc, 'strerror', None) or exc}") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise ConfigError(f"{path}: not a regular file")
    with os.fdopen(fd, "rb") as f:
        try:
            data = f.read(MAX_CONFIG_BYTES + 1)
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path}: larger than {MAX_CONFIG_BYTES >> 20} MiB: not a configuration file")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ConfigError(f"{path}: line {line}: not UTF-8 (byte {data[exc.start]:#04x}); "
                          "TOML files are UTF-8") from None


def read_toml(path: str, table: tuple[Setting, ...]) -> Values:
    """The keys set in a TOML file; unknown sections or keys are errors naming the file."""
    text = _read_text(path)
    try:
        doc = tomllib.loads(text)
    # ValueError besides TOMLDecodeError: an integer of over 4,300 digits; RecursionError: deep nesting
    except (ValueError, RecursionError) as exc:
        raise ConfigError(f"{path}: not valid TOML: {str(exc)[:200]}") from None
    known = {s.name for s in table}
    sections = {s.section for s in table}
    out: Values = {}
    for section, body in doc.items():
        if section not in sections or not isinstance(body, dict):
            raise ConfigError(f"{path}: unknown section [{section}] (known: {', '.join(sorted(sections))})")
        for key, value in body.items():
            name = f"{section}.{key}"
            if name not in known:
                raise ConfigError(f"{path}: [{section}] unknown key {key!r}")
            out[name] = value
    return out


def resolve(table: tuple[Setting, ...], from_file: Values, from_cli: Values, path: str | None) -> Values:
    """Defaults, overridden by the file, overridden by the command line; every value validated,
    then the checks that need other keys. Raises ConfigError only, whatever the values."""
    out: Values = {}
    raws: dict[str, tuple[Any, str]] = {}
    for setting in table:
        if setting.name in from_cli:
            raw, origin = from_cli[setting.name], f"command line {setting.flags[0] if setting.flags else ''}"
        elif setting.name in from_file:
            raw, origin = from_file[setting.name], f"{path}: [{setting.section}]"
        else:
            raw, origin = setting.default, "default"
        if raw is None:
            flag = f" ({setting.flags[0]})" if setting.flags else ""
            raise ConfigError(f"{setting.section}.{setting.key}{flag} is required: {setting.help}")
        raws[setting.name] = (raw, origin)
        out[setting.name] = _checked(partial(setting.check, raw), setting.key, raw, origin)
    for setting in table:
        cross = setting.cross_check
        if cross is not None:
            raw, origin = raws[setting.name]
            _checked(partial(cross, out[setting.name], out), setting.key, raw, origin)
    return out


def _checked(call: Callable[[], Any], key: str, raw: Any, origin: str) -> Any:
    """call()'s result; any refusal becomes a ConfigError naming the origin, the key and the value."""
    try:
        return call()
    # Decision: a check is a small function over arbitrary TOML values; TypeError and OverflowError
    # are refusals too (ValueError covers ConfigError and UnicodeError)
    except (ValueError, TypeError, OverflowError) as exc:
        shown = repr(raw) if len(repr(raw)) <= 200 else repr(raw)[:200] + "..."
        raise ConfigError(f"{origin} {key} = {shown}: {exc}") from None


def online_config(v: Values, source: str) -> OnlineConfig:
    from appliance.core.transfer import answer_filter, capture_filter, parse_transfers
    engine = validate_engine(EngineParams(
        mtu=v["session.mtu"], fake_syn_mss=v["session.mss"], handshake_timeout=v["session.handshake_timeout"],
        session_timeout=v["session.session_timeout"], keepalive_timeout=v["session.keepalive_timeout"],
        max_lag=v["session.max_lag"], response_quiet=v["session.response_quiet"],
        gap_timeout=v["session.gap_timeout"], buffer_limit=v["session.buffer_limit_mb"] << 20,
        max_restarts=v["session.max_restarts"], max_sessions=v["session.max_sessions"],
        shed_lag=v["session.shed_lag"]))
    transfers = v["tcpcopyd.transfer"]
    control_group, user = _control_group(v["tcpcopyd.control_group"]), _user(v["tcpcopyd.user"])
    secret_key, intercept_public_key = _curve_client(v)      # checked last, as before: keys need the user
    bpf = v["tcpcopyd.filter"] or capture_filter(parse_transfers(transfers))
    compare = None
    if v["compare.enabled"]:
        bpf = f"({bpf}) or ({answer_filter(parse_transfers(transfers))})"   # the online answers too
        compare = CompareSettings(
            head_bytes=v["compare.head_bytes"], ignore_headers=v["compare.ignore_headers"],
            latency_factor=v["compare.latency_factor"], latency_floor=v["compare.latency_floor_ms"] / 1000,
            differences_file=v["compare.differences_file"] or os.path.join(v["tcpcopyd.run_dir"], "differences.jsonl"),
            differences_max_bytes=v["compare.differences_max_mb"] << 20)
    return OnlineConfig(
        transfers=transfers, intercepts=v["tcpcopyd.intercepts"], interfaces=v["tcpcopyd.interfaces"],
        bpf=bpf, compare=compare,
        workers=v["tcpcopyd.workers"] or auto_workers(),
        run_dir=v["tcpcopyd.run_dir"], engine=engine, pin_cpus=v["tcpcopyd.pin_cpus"],
        buffer_bytes=v["tcpcopyd.capture_buffer_mb"] << 20, sample_rate=v["tcpcopyd.sample_percent"] / 100,
        client_pool=v["tcpcopyd.client_pool"], copies=v["tcpcopyd.copies"],
        log_level=v["tcpcopyd.log_level"], metrics_listen=v["tcpcopyd.metrics_listen"],
        graceful_timeout=v["supervisor.graceful_timeout"], startsecs=v["supervisor.startsecs"],
        startretries=v["supervisor.startretries"], source=source,
        control_group=control_group, user=user, verify_midstream=v["tcpcopyd.midstream"] == "verify",
        secret_key=secret_key, intercept_public_key=intercept_public_key)


def _user(name: str) -> str:
    if name:
        from appliance.host.privileges import lookup_user
        lookup_user(name)
    return name


def access_as(user: str, path: str, mode: int) -> bool:
    """os.access(path, mode) for the process `user` becomes (privileges.drop_to: its uid, its primary
    group, no supplementary groups), so ACLs count too. Runs in the supervisor or interceptd at
    start, single-threaded, before any child or socket exists; the effective ids are always restored.
    Without a user, or when not root (drop_to does nothing then), the current process's view."""
    if not user or os.geteuid() != 0:
        return os.access(path, mode)
    from appliance.host.privileges import lookup_user
    entry = lookup_user(user)
    groups, egid = os.getgroups(), os.getegid()
    try:
        os.setgroups([])
        os.setegid(entry.pw_gid)
        os.seteuid(entry.pw_uid)
        return os.access(path, mode, effective_ids=True)
    except OSError:
        return True          # cannot take its ids here (a user namespace?): no verdict; drop_to will say
    finally:
        if os.geteuid() != 0:
            os.seteuid(0)
        if os.getegid() != egid:
            os.setegid(egid)
        if os.getgroups() != groups:
            os.setgroups(groups)


def _readable_by(user: str, path: str, what: str, mode: int = os.R_OK) -> None:
    if not access_as(user, path, mode):
        kind = "directory" if mode & os.X_OK else "file"
        raise ConfigError(f"{what} = {path!r}: user {user!r} cannot read this {kind}, and the daemon "
                          f"reads it after becoming that user (chgrp it to {user}'s group and chmod g+r"
                          f"{'x' if mode & os.X_OK else ''})")


def _control_group(name: str) -> str:
    """control_group must exist, and tcpcopyd must be able to give it the control socket: root can
    (it does so before any drop to `user`), a plain user (the units' User=tcpcopy) only a group it
    is in; the packages make the group tcpcopyctl and the unit grants it (SupplementaryGroups=)."""
    if not name:
        return name
    try:
        gid = grp.getgrnam(name).gr_gid
    except (KeyError, ValueError):
        raise ConfigError(f"control_group = {name!r}: no such group (the packages make 'tcpcopyctl'; "
                          f"or: groupadd --system {name})") from None
    if os.geteuid() != 0 and gid != os.getegid() and gid not in os.getgroups():
        raise ConfigError(f"control_group = {name!r}: tcpcopyd runs as uid {os.geteuid()}, which is not in "
                          f"that group, so it cannot give it the control socket; use control_group = "
                          f"'tcpcopyctl' (the unit grants it), or add SupplementaryGroups={name} to the "
                          "unit (systemctl edit tcpcopyd)")
    return name


def _curve_client(v: Values) -> tuple[str, str]:
    """The key files of tcpcopyd's side (secret, interceptd's public), checked now so a missing key
    stops the start. The rewrite workers read them after the supervisor became `user`, so that user
    must be able to read them. Empty names: plaintext."""
    if v["security.insecure"]:
        return "", ""
    from appliance.host.curvekeys import load_public, load_secret
    secret, public = v["security.secret_key"], v["security.intercept_public_key"]
    load_secret(secret, "[security] secret_key")
    load_public(public, "[security] intercept_public_key")
    _readable_by(v["tcpcopyd.user"], secret, "[security] secret_key")
    _readable_by(v["tcpcopyd.user"], public, "[security] intercept_public_key")
    return secret, public


def intercept_config(v: Values) -> InterceptConfig:
    """interceptd reads its secret key as root, but the authorized keys again whenever an unknown key
    knocks, after it became `user`: that user must be able to list and read the directory."""
    secret = authorized = ""
    user = _user(v["interceptd.user"])
    if not v["security.insecure"]:
        from appliance.host.curvekeys import load_secret
        secret, authorized = v["security.secret_key"], v["security.authorized_keys"]
        load_secret(secret, "[security] secret_key")
        if not os.path.isdir(authorized):
            raise ConfigError(f"[security] authorized_keys = {authorized!r}: no such directory of tcpcopyd "
                              "public keys (or set insecure = true for a lab)")
        _readable_by(user, authorized, "[security] authorized_keys", os.R_OK | os.X_OK)
    compare = _assembler_spec(v) if v["interceptd.compare"] else None
    return InterceptConfig(interfaces=v["interceptd.interfaces"], bpf=v["interceptd.filter"],
                           bind=v["interceptd.bind"], port=v["interceptd.port"],
                           snaplen=HEADERS_SNAPLEN if compare is None else WHOLE_SNAPLEN,
                           buffer_bytes=v["interceptd.capture_buffer_mb"] << 20,
                           log_level=v["interceptd.log_level"], secret_key=secret, authorized_keys=authorized,
                           user=user, compare=compare)


def _assembler_spec(v: Values) -> AssemblerSpec:
    turn_idle, flow_idle = v["interceptd.compare_turn_idle"], v["interceptd.compare_flow_idle"]
    if flow_idle < turn_idle:
        raise ConfigError(f"interceptd.compare_flow_idle = {flow_idle:g}: must be at least "
                          f"compare_turn_idle ({turn_idle:g})")
    return AssemblerSpec(head_bytes=v["interceptd.compare_head_bytes"], max_flows=v["interceptd.compare_max_flows"],
                         turn_idle=turn_idle, flow_idle=flow_idle)


def validate_positive(name: str, value: float, maximum: float | None = None) -> float:
    if not value > 0 or (maximum is not None and value > maximum):
        bound = f" and at most {maximum}" if maximum is not None else ""
        raise ConfigError(f"{name} = {value!r}: must be greater than 0{bound}")
    return value


def validate_engine(p: EngineParams) -> EngineParams:
    if not 576 <= p.mtu <= 65535:
        raise ConfigError(f"mtu = {p.mtu}: must be 576-65535")
    if not 88 <= p.fake_syn_mss <= p.mtu - 40:
        raise ConfigError(f"[session] mss = {p.fake_syn_mss}: must be 88-{p.mtu - 40} (mtu - 40)")
    for name in ("handshake_timeout", "syn_rto", "rto_min", "rto_max", "response_quiet", "max_lag",
                 "gap_timeout", "session_timeout", "keepalive_timeout", "linger"):
        validate_positive(name, getattr(p, name))
    if p.buffer_limit < 65536:
        raise ConfigError(f"buffer_limit = {p.buffer_limit}: must be at least 65536 bytes")
    return p


def add_setting_flags(parser: Any, table: tuple[Setting, ...]) -> None:
    """One command-line flag per setting; unset flags stay None so the file's values survive."""
    for setting in table:
        if setting.flags:
            default = "" if setting.default is None else setting.default
            if isinstance(default, tuple):
                default = ",".join(default)
            parser.add_argument(*setting.flags, dest=setting.name, default=None, metavar=setting.key.upper(),
                                help=f"{setting.help} [{setting.section}] {setting.key}, default {default!r}")


def values_from_args(args: Any, table: tuple[Setting, ...]) -> Values:
    return {s.name: getattr(args, s.name) for s in table if getattr(args, s.name, None) is not None}


def load(table: tuple[Setting, ...], path: str | None, args: Any) -> Values:
    """Defaults <- file <- command line, validated. Raises ConfigError naming source, key and value."""
    from_file = read_toml(path, table) if path else {}
    return resolve(table, from_file, values_from_args(args, table), path)
