"""Does the online host's own socket table hold this connection? (NETLINK_SOCK_DIAG, one exact lookup)

Runs in a rewrite worker, in the online host's network namespace. Used before tcpcopyd forges a SYN
for a captured mid-stream segment: a connection the online server never accepted (a spoofed segment)
is not replayed (issue 14: blind injection through the forged SYN).

The lookup is the kernel's exact 4-tuple search (inet_diag without NLM_F_DUMP), ~10 us; a kernel
without inet_diag (module absent, refused) falls back to reading /proc/self/net/tcp once per lookup.
"""

from __future__ import annotations

import errno
import logging
import socket
import struct

log = logging.getLogger(__name__)

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLM_F_REQUEST = 0x01
NLMSG_ERROR = 2
# nlmsghdr (host order), then inet_diag_req_v2: family, protocol, ext, pad, states (host order),
# inet_diag_sockid: ports and addresses in network order, interface and cookie in host order
_NLMSGHDR = struct.Struct("=IHHII")
_REQ = struct.Struct("=BBBBI")
_SOCKID = struct.Struct("!HH16s16s")
_SOCKID_TAIL = struct.Struct("=III")
_REQUEST_LEN = _NLMSGHDR.size + _REQ.size + _SOCKID.size + _SOCKID_TAIL.size
_NO_COOKIE = 0xFFFFFFFF
_ALL_STATES = 0xFFFFFFFF
_ERRNO = struct.Struct("=i")

# Linux TCP states (include/net/tcp_states.h) of a connection the server accepted
TCP_LISTEN, TCP_SYN_RECV = 10, 3
_NOT_ACCEPTED = frozenset({TCP_LISTEN, TCP_SYN_RECV})


class SocketTable:
    """Exact lookups of TCP connections in this network namespace."""

    def __init__(self) -> None:
        self._seq = 0
        self._sock: socket.socket | None = None
        try:
            self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_SOCK_DIAG)
            self._sock.settimeout(1.0)
        except OSError as exc:
            log.warning("sock_diag unavailable (%s): connections are looked up in /proc/self/net/tcp", exc)

    def holds(self, local_ip: int, local_port: int, remote_ip: int, remote_port: int) -> bool:
        """True when a TCP socket local_ip:local_port <-> remote_ip:remote_port exists here in a state
        past the handshake (established, closing or TIME_WAIT). IPv4 addresses as integers."""
        if self._sock is not None:
            found = self._diag(local_ip, local_port, remote_ip, remote_port)
            if found is not None:
                return found
        return _in_proc_net_tcp(local_ip, local_port, remote_ip, remote_port)

    def _diag(self, local_ip: int, local_port: int, remote_ip: int, remote_port: int) -> bool | None:
        """The kernel's answer, or None when it could not give one (then /proc decides)."""
        assert self._sock is not None
        self._seq = (self._seq + 1) & 0xFFFFFFFF
        request = (_NLMSGHDR.pack(_REQUEST_LEN, SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST, self._seq, 0)
                   + _REQ.pack(socket.AF_INET, socket.IPPROTO_TCP, 0, 0, _ALL_STATES)
                   + _SOCKID.pack(local_port, remote_port, local_ip.to_bytes(4, "big").ljust(16, b"\0"),
                                  remote_ip.to_bytes(4, "big").ljust(16, b"\0"))
                   + _SOCKID_TAIL.pack(0, _NO_COOKIE, _NO_COOKIE))
        try:
            self._sock.send(request)
            while True:
                reply = self._sock.recv(8192)
                if len(reply) < _NLMSGHDR.size + 4:
                    return None
                _, kind, _, seq, _ = _NLMSGHDR.unpack_from(reply)
                if seq == self._seq:
                    break                   # an answer to an earlier, timed-out request is skipped
        except OSError as exc:
            log.warning("sock_diag lookup failed (%s): using /proc/self/net/tcp", exc)
            self._sock.close()
            self._sock = None
            return None
        if kind == NLMSG_ERROR:
            (code,) = _ERRNO.unpack_from(reply, _NLMSGHDR.size)
            if code == -errno.ENOENT:
                return False
            return None
        if kind != SOCK_DIAG_BY_FAMILY:
            return None
        state = reply[_NLMSGHDR.size + 1]
        return state not in _NOT_ACCEPTED

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _hex_endpoint(ip: int, port: int) -> str:
    """An IPv4 endpoint as /proc/net/tcp writes it: the address in host byte order, in hex."""
    packed = ip.to_bytes(4, "big")
    host_order = int.from_bytes(packed, "little" if struct.pack("=H", 1) == b"\x01\x00" else "big")
    return f"{host_order:08X}:{port:04X}"


def _in_proc_net_tcp(local_ip: int, local_port: int, remote_ip: int, remote_port: int,
                     path: str = "/proc/self/net/tcp") -> bool:   # /proc/net is hidden by ProcSubset=pid
    local, remote = _hex_endpoint(local_ip, local_port), _hex_endpoint(remote_ip, remote_port)
    try:
        with open(path, encoding="ascii") as table:
            next(table, None)
            for line in table:
                fields = line.split()
                if len(fields) > 3 and fields[1] == local and fields[2] == remote:
                    return int(fields[3], 16) not in _NOT_ACCEPTED
    except OSError as exc:
        log.warning("cannot read %s (%s): the connection counts as not found", path, exc)
    return False
