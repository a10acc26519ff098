"""Every configuration key of tcpcopyd and interceptd: section, name, default, range, flag, help.

One table per program. It drives the TOML loader, the command-line parser (flags override the
file), validation (errors name the source, the key and the value) and the test that keeps
conf/*.toml complete. Runs in the supervisor (tcpcopyd) or in interceptd, before anything starts.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

Check = Callable[[Any], Any]     # returns the normalised value or raises ValueError(reason)
# (value, every resolved value) -> None or ValueError(reason): a check that needs other keys
CrossCheck = Callable[[Any, dict[str, Any]], None]


@dataclass(frozen=True, slots=True)
class Setting:
    section: str
    key: str
    default: Any
    check: Check
    help: str
    flags: tuple[str, ...] = ()
    live: bool = False           # SIGHUP / tcpcopyctl set can change it without a restart
    cross_check: CrossCheck | None = None    # run once every key is resolved

    @property
    def name(self) -> str:
        return f"{self.section}.{self.key}"


# ---- validators: one small function per kind of value -----------------------------------------
def worker_count(value: Any) -> int:
    """A number of workers, or "auto" (0 here; `auto_workers` picks the number at start)."""
    if value == "auto":
        return 0
    count: int = _workers_range(value)
    return count


def auto_workers() -> int:
    """Half the CPUs this process may use, 1-16: a worker shares its cores with the captures, the
    kernel's work for the target and, on small hosts, the service; on 2 cores one worker sends as
    many packets as two at a third less CPU (perf/README.md)."""
    return max(1, min(16, len(os.sched_getaffinity(0)) // 2))


# Decision: numbers given as text (flags) are ASCII only. int() and float() also take other
# scripts' digits ('８０８０', '٨٠٨٠'), and str.isdigit() passes '²', which int() then refuses.
_INTEGER_TEXT = re.compile(r"[+-]?[0-9]+")
_NUMBER_TEXT = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?")


def _ascii_only(value: str) -> str:
    for char in value:
        if not char.isascii():
            raise ValueError(f"{char!r} is not ASCII (addresses and ports are written with 0-9)")
    return value


def integer(lo: int, hi: int) -> Check:
    def check(value: Any) -> int:
        if isinstance(value, bool) or (isinstance(value, str) and not _INTEGER_TEXT.fullmatch(value.strip())):
            raise ValueError("must be a whole number")
        try:
            number = int(value)
        except (TypeError, ValueError, OverflowError):      # OverflowError: inf
            raise ValueError("must be a whole number") from None
        if isinstance(value, float) and number != value:
            raise ValueError("must be a whole number")
        if not lo <= number <= hi:
            raise ValueError(f"must be {lo}-{hi}")
        return number
    check.range = f"{lo}-{hi}"  # type: ignore[attr-defined]
    return check


def number(lo: float, hi: float) -> Check:
    def check(value: Any) -> float:
        if isinstance(value, bool) or (isinstance(value, str) and not _NUMBER_TEXT.fullmatch(value.strip())):
            raise ValueError(f"must be a number, {lo:g}-{hi:g}")
        try:
            result = float(value)
        except (TypeError, ValueError, OverflowError):      # OverflowError: an integer past 1e308
            raise ValueError(f"must be a number, {lo:g}-{hi:g}") from None
        if not math.isfinite(result):
            raise ValueError(f"must be a finite number, {lo:g}-{hi:g}")
        if not lo <= result <= hi:
            raise ValueError(f"must be {lo:g}-{hi:g}")
        return result
    check.range = f"{lo:g}-{hi:g}"  # type: ignore[attr-defined]
    return check


def boolean(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "yes", "on", "1", "false", "no", "off", "0"):
        return value.lower() in ("true", "yes", "on", "1")
    raise ValueError("must be true or false")


def text(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("must be a string")
    return value


def plain_text(value: Any) -> str:
    """A string without NUL (a path, a user name, a filter): C would cut it at the NUL."""
    checked = text(value)
    if "\0" in checked:
        raise ValueError("must not contain a NUL character")
    return checked


def choice(*options: str) -> Check:
    def check(value: Any) -> str:
        if value not in options:
            raise ValueError(f"must be one of {', '.join(options)}")
        return str(value)
    check.range = " | ".join(options)  # type: ignore[attr-defined]
    return check


def word_list(value: Any) -> tuple[str, ...]:
    """A TOML list of strings, or a comma-separated string (command line)."""
    if isinstance(value, str):
        items = [v.strip() for v in value.split(",")]
    elif isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        items = [v.strip() for v in value]
    else:
        raise ValueError("must be a list of strings")
    items = [v for v in items if v]
    if not items:
        raise ValueError("must not be empty")
    return tuple(items)


def listen_address(value: Any) -> str:
    """"" (off) or HOST:PORT."""
    address = text(value)
    if not address:
        return ""
    host, sep, port = address.rpartition(":")
    if not sep or not _INTEGER_TEXT.fullmatch(port) or not 0 < int(port) < 65536:
        raise ValueError("must be HOST:PORT with a port 1-65535, or empty to turn it off")
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        raise ValueError(f"{host!r} is not an IP address") from None
    return address


MAX_POOL = 65536


def client_pool(value: Any) -> tuple[str, ...]:
    """Addresses from CIDRs, 'a.b.c.x' (hosts .1-.254) or single addresses; () for none."""
    if value in ((), [], ""):
        return ()
    out: list[str] = []
    for item in word_list(value):
        if item.endswith(".x"):
            item = item[:-2] + ".0/24"
        try:
            net = ipaddress.IPv4Network(item, strict=False)
        except ValueError:
            raise ValueError(f"{item!r} is not an IPv4 address, network or a.b.c.x") from None
        # counted before expanding: a /8 would be 16 million strings, a /0 exhausts memory
        count = net.num_addresses - 2 if net.num_addresses > 2 else net.num_addresses
        if len(out) + count > MAX_POOL:
            raise ValueError(f"{item!r} makes the pool {len(out) + count} addresses: at most {MAX_POOL}")
        out += [str(h) for h in net.hosts()] if net.num_addresses > 1 else [str(net.network_address)]
    return tuple(dict.fromkeys(out))


def transfers(value: Any) -> str:
    from appliance.core.transfer import parse_transfers
    specs = parse_transfers(_ascii_only(text(value)))
    if len(set(specs)) != len(specs):
        twice = next(t for i, t in enumerate(specs) if t in specs[:i])
        raise ValueError(f"transfer {str(twice)!r} is given twice (every session would be sent twice "
                         "to the same target from the same client)")
    return ",".join(str(t) for t in specs)


_HOST_LABEL = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?")
_DOTTED_DIGITS = re.compile(r"[0-9.]+")


def host_name(host: str) -> str:
    """An IPv4 address, or a host or interface name as ZeroMQ takes them in tcp:// endpoints.

    Refused: IPv6 (the sockets do not turn ZeroMQ's ipv6 option on, so it would never connect),
    a dotted quad that is no address ('10.0.0.999'), spaces, slashes, empty labels."""
    if ":" in host or host.startswith("["):
        raise ValueError(f"{host!r}: IPv6 is not supported here, give an IPv4 address or a name")
    if _DOTTED_DIGITS.fullmatch(host):
        try:
            return str(ipaddress.IPv4Address(host))
        except ValueError:
            raise ValueError(f"{host!r} is not an IPv4 address") from None
    labels = host[:-1] if host.endswith(".") else host
    if len(labels) > 253 or not all(_HOST_LABEL.fullmatch(label) for label in labels.split(".")):
        raise ValueError(f"{host!r} is not an IPv4 address or a host name")
    return host


def intercepts(value: Any) -> tuple[str, ...]:
    from appliance.core.wire import parse_intercept_address
    items = word_list(value)
    seen: set[tuple[str, int]] = set()
    for item in items:
        host, port = parse_intercept_address(_ascii_only(item))
        address = (host_name(host).lower(), port)
        if address in seen:
            raise ValueError(f"interceptd {item!r} is given twice (every answer would arrive twice)")
        seen.add(address)
    return items


def bind_address(value: Any) -> str:
    """'*' (every address), an IPv4 address, or an interface or host name for ZeroMQ's bind."""
    value = _ascii_only(text(value))
    return value if value == "*" else host_name(value)


# BPF filters are compiled for the link type of each capture interface, without opening a device
ARPHRD_LINK_TYPES = {1: "EN10MB", 772: "EN10MB", 65534: "RAW"}   # ether, loopback, none (tun, wireguard)
ANY_LINK_TYPES = ("EN10MB", "LINUX_SLL", "RAW")


def link_types(interface: str) -> tuple[str, ...]:
    """libpcap link types (DLT_ names) a capture on `interface` can have: 'any' is Linux cooked,
    a known interface its own; an unknown one (absent, or not yet made) any of the usual three."""
    if interface == "any":
        return ("LINUX_SLL",)
    if "/" in interface or "\0" in interface or interface in (".", ".."):
        return ANY_LINK_TYPES
    try:
        with open(f"/sys/class/net/{interface}/type") as f:
            arphrd = int(f.read().strip())
    except (OSError, ValueError):
        return ANY_LINK_TYPES
    known = ARPHRD_LINK_TYPES.get(arphrd)
    return (known,) if known else ANY_LINK_TYPES


def bpf_compiles(expression: str, link_type: str) -> bool:
    """libpcap compiles it (pcap_open_dead + pcap_compile inside pypcap's `bpf`: no device, no root).
    Host names in it are resolved, as the capture would."""
    import pcap
    try:
        pcap.bpf(expression.encode(), getattr(pcap, f"DLT_{link_type}"))
    except OSError:
        return False
    return True


def bpf_filter(value: Any) -> str:
    expression = plain_text(value)
    try:
        expression.encode()
    except UnicodeEncodeError:
        raise ValueError("is not valid UTF-8") from None
    return expression


def compiles_on(interfaces_key: str) -> CrossCheck:
    """A cross check: the filter compiles for every capture interface (an empty one is built later)."""
    def check(value: str, values: dict[str, Any]) -> None:
        for interface in values[interfaces_key]:
            kinds = link_types(interface)
            if value and not any(bpf_compiles(value, kind) for kind in kinds):
                raise ValueError(f"libpcap cannot compile it for interface {interface!r} "
                                 f"(link type {' or '.join(kinds)}): a syntax error, an unknown host name, "
                                 "or a primitive this link type lacks")
    return check


_workers_range = integer(1, 64)
worker_count.range = "auto | 1-64"  # type: ignore[attr-defined]

LOG_LEVELS = ("debug", "info", "warning", "error")
# HTTP headers whose values always differ between two servers (answer comparison)
IGNORED_HEADERS = frozenset({
    "date", "server", "age", "expires", "last-modified", "etag", "set-cookie", "keep-alive", "via",
    "x-request-id", "x-correlation-id", "request-id", "x-amzn-trace-id", "traceparent", "tracestate",
    "x-b3-traceid", "x-b3-spanid", "x-runtime", "x-response-time", "x-served-by", "x-cache", "content-length",
})
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9a-z-]{1,64}")


def header_names(value: Any) -> tuple[str, ...]:
    """HTTP header names, lower-cased (a list, or comma-separated)."""
    names = tuple(name.lower() for name in word_list(value))
    for name in names:
        if not _HEADER_NAME.fullmatch(name):
            raise ValueError(f"{name[:70]!r} is not an HTTP header name")
    if len(names) > 256:
        raise ValueError("at most 256 header names")
    return names


ONLINE: tuple[Setting, ...] = (
    Setting("tcpcopyd", "transfer", None, transfers,
            "[ONLINE_IP:]PORT-TARGET_IP:PORT[,...]: what to copy and where to (required)", ("-x", "--transfer")),
    Setting("tcpcopyd", "intercepts", None, intercepts,
            "interceptd addresses HOST[:PORT] (default port 36524) (required)", ("-s", "--intercept")),
    Setting("tcpcopyd", "interfaces", ("any",), word_list, "capture interfaces", ("-i", "--interface")),
    Setting("tcpcopyd", "filter", "", bpf_filter, "BPF capture filter; empty: built from transfer",
            ("-F", "--filter"), cross_check=compiles_on("tcpcopyd.interfaces")),
    Setting("tcpcopyd", "workers", "auto", worker_count, "rewrite-and-send workers (shards); auto: half the CPUs",
            ("-w", "--workers")),
    Setting("tcpcopyd", "capture_buffer_mb", 128, integer(8, 2048), "capture ring per interface, MiB",
            ("-B", "--buffer-mb")),
    Setting("tcpcopyd", "pin_cpus", True, boolean, "pin each child to one CPU", ("--pin-cpus",)),
    Setting("tcpcopyd", "run_dir", "/run/tcpcopy-py", text, "directory for control and queue sockets",
            ("--run-dir",)),
    Setting("tcpcopyd", "log_level", "info", choice(*LOG_LEVELS), "log level",
            ("--log-level",), live=True),
    Setting("tcpcopyd", "sample_percent", 100.0, number(0.0, 100.0),
            "percentage of new sessions replayed, chosen by client address and port", ("-r", "--sample-percent"),
            live=True),
    Setting("tcpcopyd", "client_pool", (), client_pool,
            "rewrite client addresses into this pool (CIDR, a.b.c.x or a list); the target's route must "
            "cover it; empty: keep the clients' own", ("-c", "--client-pool")),
    Setting("tcpcopyd", "copies", 1, integer(1, 1000),
            "send every session this many times, each copy from its own client (ip, port)", ("-n", "--copies")),
    Setting("tcpcopyd", "midstream", "verify", choice("verify", "trust"),
            "a connection whose SYN was not captured is replayed (behind a forged SYN) only if this host's "
            "socket table holds it (verify), or always (trust: capturing a mirror port, not the online host); "
            "offline replay always trusts its files", ("--midstream",)),
    Setting("tcpcopyd", "metrics_listen", "", listen_address,
            "Prometheus endpoint HOST:PORT; empty: off", ("--metrics-listen",)),
    Setting("tcpcopyd", "user", "", plain_text,
            "after start, run as this user with only CAP_NET_RAW and CAP_NET_ADMIN; empty: stay root",
            ("--user",)),
    Setting("tcpcopyd", "control_group", "", text,
            "group allowed to use tcpcopyctl besides root; empty: root only", ("--control-group",)),
    Setting("security", "secret_key", "/etc/tcpcopy/curve/tcpcopyd.key_secret", plain_text,
            "this tcpcopyd's CURVE secret key (tcpcopyctl keygen)", ("--secret-key",)),
    Setting("security", "intercept_public_key", "/etc/tcpcopy/curve/interceptd.key", plain_text,
            "interceptd's CURVE public key: answers from any other publisher are refused",
            ("--intercept-public-key",)),
    Setting("security", "insecure", False, boolean,
            "true: talk to interceptd in plaintext, unauthenticated (lab only)", ("--insecure",)),
    Setting("session", "mtu", 1500, integer(576, 65535), "largest packet sent to the target", ("-M", "--mtu")),
    Setting("session", "mss", 1460, integer(88, 65495), "MSS in SYNs forged for connections without a SYN",
            ("-D", "--mss")),
    Setting("session", "handshake_timeout", 20.0, number(0.1, 300),
            "seconds for the target's SYN-ACK (SYNs are retried, data held, meanwhile)",
            ("--handshake-timeout",)),
    Setting("session", "session_timeout", 120.0, number(1, 86400), "seconds of silence with data pending",
            ("-t", "--session-timeout")),
    Setting("session", "keepalive_timeout", 720.0, number(1, 864000), "seconds of silence on an idle session",
            ("-k", "--keepalive-timeout")),
    Setting("session", "max_lag", 1.0, number(0.001, 600),
            "seconds a request may wait for the target's answer before it is sent anyway", ("--max-lag",)),
    Setting("session", "response_quiet", 0.010, number(0.0001, 10),
            "target silence that ends an answer whose size differs from the original", ("--response-quiet",)),
    Setting("session", "gap_timeout", 0.5, number(0.01, 60),
            "a hole in the captured stream this old is a capture gap", ("--gap-timeout",)),
    Setting("session", "buffer_limit_mb", 16, integer(1, 4096), "client bytes buffered per session, MiB",
            ("--buffer-limit-mb",)),
    Setting("session", "max_restarts", 3, integer(0, 100), "new target connections for one client session",
            ("--max-restarts",)),
    Setting("session", "shed_lag", 0.5, number(0.0, 600),
            "overload: while a worker is this many seconds behind its capture it starts no new session "
            "(sessions_shed), so the sessions it started still complete; 0: never", ("--shed-lag",)),
    Setting("session", "max_sessions", 100_000, integer(100, 10_000_000),
            "sessions tracked per worker (about 3 KiB each); beyond it the oldest are reset and forgotten",
            ("--max-sessions",)),
    Setting("compare", "enabled", False, boolean,
            "compare the target's answers with the online server's, turn by turn (interceptd needs compare "
            "too); the differences in tcpcopyctl diff, status and differences_file", ("--compare",)),
    Setting("compare", "head_bytes", 512, integer(16, 4096), "answer bytes kept per turn and shown in a difference",
            ("--compare-head-bytes",)),
    Setting("compare", "ignore_headers", tuple(sorted(IGNORED_HEADERS)), header_names,
            "HTTP headers that always differ and are not compared", ("--compare-ignore",)),
    Setting("compare", "latency_factor", 2.0, number(1.0, 1000.0),
            "a target turn this many times slower than online (and latency_floor_ms slower) is a difference",
            ("--compare-latency-factor",)),
    Setting("compare", "latency_floor_ms", 10.0, number(0.0, 600_000.0),
            "latency differences smaller than this are never flagged", ("--compare-latency-floor",)),
    Setting("compare", "differences_file", "", text,
            "JSON lines, one per differing answer with both heads; empty: RUN_DIR/differences.jsonl",
            ("--differences-file",)),
    Setting("compare", "differences_max_mb", 100, integer(1, 100_000),
            "the differences file stops growing here (differences_not_written counts the rest)",
            ("--differences-max-mb",)),
    Setting("supervisor", "graceful_timeout", 5.0, number(0.1, 300), "seconds each stop phase may take",
            ("--graceful-timeout",)),
    Setting("supervisor", "startsecs", 1.0, number(0.1, 60), "a child dying sooner failed to boot",
            ("--startsecs",)),
    Setting("supervisor", "startretries", 3, integer(1, 100), "failed boots in a row before halting",
            ("--startretries",)),
)

INTERCEPT: tuple[Setting, ...] = (
    Setting("interceptd", "filter", None, bpf_filter,
            "BPF for the target's answers, e.g. 'tcp and src host T and src port 8080' (required)",
            ("-F", "--filter"), cross_check=compiles_on("interceptd.interfaces")),
    Setting("interceptd", "interfaces", ("any",), word_list, "capture interfaces", ("-i", "--interface")),
    Setting("interceptd", "bind", "0.0.0.0", bind_address, "address to publish on: *, an IPv4 address or "
            "an interface name", ("-b", "--bind")),
    Setting("interceptd", "port", 36524, integer(1, 65535), "port to publish on", ("-p", "--port")),
    Setting("interceptd", "capture_buffer_mb", 32, integer(4, 2048), "capture ring per interface, MiB",
            ("-B", "--buffer-mb")),
    Setting("interceptd", "log_level", "info", choice(*LOG_LEVELS), "log level",
            ("--log-level",)),
    Setting("interceptd", "user", "", plain_text,
            "after opening its captures, run as this user with only CAP_NET_RAW and CAP_NET_ADMIN",
            ("--user",)),
    Setting("interceptd", "compare", False, boolean,
            "compare mode: also publish each answer turn (length, digests, first bytes) to the tcpcopyd "
            "workers that compare answers; captures whole answers, so give it a larger capture_buffer_mb "
            "(e.g. 128)", ("--compare",)),
    Setting("interceptd", "compare_head_bytes", 512, integer(16, 4096),
            "compare mode: bytes of each answer turn's beginning published (HTTP: status line and headers)",
            ("--compare-head-bytes",)),
    Setting("interceptd", "compare_turn_idle", 2.0, number(0.01, 600),
            "compare mode: seconds without answer bytes before an open turn is published as ended",
            ("--compare-turn-idle",)),
    Setting("interceptd", "compare_flow_idle", 300.0, number(1, 86400),
            "compare mode: seconds without any segment before a connection is forgotten (its later turns "
            "count from 0 again); at least compare_turn_idle", ("--compare-flow-idle",)),
    Setting("interceptd", "compare_max_flows", 65536, integer(256, 4_000_000),
            "compare mode: connections tracked at once (a few hundred bytes each, plus the open turns' "
            "heads); beyond it the least recently active is forgotten and counted",
            ("--compare-max-flows",)),
    Setting("security", "secret_key", "/etc/tcpcopy/curve/interceptd.key_secret", plain_text,
            "interceptd's CURVE secret key (tcpcopyctl keygen)", ("--secret-key",)),
    Setting("security", "authorized_keys", "/etc/tcpcopy/curve/authorized", plain_text,
            "directory of the tcpcopyd public keys allowed to subscribe; others are refused and counted",
            ("--authorized-keys",)),
    Setting("security", "insecure", False, boolean,
            "true: publish in plaintext to anyone who connects (lab only)", ("--insecure",)),
)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return repr(value)


def render_sample(table: tuple[Setting, ...], title: str, examples: dict[str, Any]) -> str:
    """The sample configuration file: every key, commented, with its default, range and flag."""
    lines = [f"# {title}", "# Every key is listed with its default; command-line flags override this file.", ""]
    section = None
    for s in table:
        if s.section != section:
            section = s.section
            lines += [f"[{section}]"] if section == table[0].section else ["", f"[{section}]"]
        notes = [s.help]
        rng = getattr(s.check, "range", None)
        if rng:
            notes.append(f"range {rng}")
        if s.flags:
            notes.append(f"flag {' / '.join(s.flags)}")
        if s.live:
            notes.append("changes live on SIGHUP")
        lines.append("# " + "; ".join(notes))
        if s.default is None:
            lines.append(f"{s.key} = {_toml_value(examples[s.name])}")
        else:
            lines.append(f"# {s.key} = {_toml_value(s.default)}")
    return "\n".join(lines) + "\n"
