"""Batched raw IPv4 sends: packets are built into one buffer and leave with one sendmmsg(2).

Runs inside a rewrite worker. Python's socket module has no sendmmsg, so libc's is called
through ctypes on message headers packed into a fixed buffer (x86_64/aarch64 Linux layout,
checked against ctypes at start; anything else falls back to one sendto per packet). One
syscall per batch instead of one per packet; the packets are written straight into the send
buffer (appliance.core.packet.build_into), so no per-packet bytes object is made either.
"""

from __future__ import annotations

import ctypes
import errno
import socket
import struct
from collections.abc import Callable

from appliance.core.packet import MIN_IP_HEADER, MIN_TCP_HEADER, build_into

MAX_BATCH = 256
SNDBUF = 8 << 20
MAX_OPTIONS = 40


class _Iovec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


class _Msghdr(ctypes.Structure):
    _fields_ = [("msg_name", ctypes.c_void_p), ("msg_namelen", ctypes.c_uint32),
                ("msg_iov", ctypes.c_void_p), ("msg_iovlen", ctypes.c_size_t),
                ("msg_control", ctypes.c_void_p), ("msg_controllen", ctypes.c_size_t),
                ("msg_flags", ctypes.c_int)]


class _Mmsghdr(ctypes.Structure):
    _fields_ = [("msg_hdr", _Msghdr), ("msg_len", ctypes.c_uint)]


# struct mmsghdr as packed here: name, namelen, iov, iovlen (control, controllen, flags, len stay 0)
_MMSG = struct.Struct("@PI4xPN")
_IOVEC = struct.Struct("@PN")
_LAYOUT_OK = (ctypes.sizeof(ctypes.c_void_p) == 8 and ctypes.sizeof(_Mmsghdr) == 64
              and ctypes.sizeof(_Iovec) == 16 and _Msghdr.msg_iov.offset == 16 and _MMSG.size == 32)


def _sendmmsg() -> Callable[..., int] | None:
    try:
        fn = ctypes.CDLL(None, use_errno=True).sendmmsg
    except (OSError, AttributeError):
        return None
    fn.argtypes = (ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int)
    fn.restype = ctypes.c_int
    return fn


class RawSender:
    """An IP_HDRINCL socket and a batch being filled. `add` builds a packet into the batch, `flush`
    sends it; errors are counted by errno name in `errors`, successes in `sent`."""

    def __init__(self, mtu: int, max_batch: int = MAX_BATCH, batched: bool = True) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SNDBUF)
        self.fd = self.sock.fileno()
        self.max_batch = max_batch
        self.slot = (mtu + MAX_OPTIONS + 63) // 64 * 64      # bytes per packet in the buffer
        self.max_payload = self.slot - MIN_IP_HEADER - MIN_TCP_HEADER - MAX_OPTIONS
        self.sent = 0
        self.errors: dict[str, int] = {}
        self.count = 0
        self._lengths: list[int] = []
        self._dsts: list[int] = []
        self._data = (ctypes.c_char * (self.slot * max_batch))()
        self.buffer = memoryview(self._data).cast("B")
        self._sendmmsg = _sendmmsg() if batched and _LAYOUT_OK else None
        self._msgs = (_Mmsghdr * max_batch)()
        self._iovs = (_Iovec * max_batch)()
        self._msgs_view = memoryview(self._msgs).cast("B")
        self._iovs_view = memoryview(self._iovs).cast("B")
        self._data_at = ctypes.addressof(self._data)
        self._iovs_at = ctypes.addressof(self._iovs)
        self._msgs_at = ctypes.addressof(self._msgs)
        self._names: dict[int, tuple[ctypes.Array, int, str]] = {}   # dst ip -> sockaddr_in, address, text

    @property
    def batched(self) -> bool:
        return self._sendmmsg is not None

    def add(self, src_ip: int, dst_ip: int, src_port: int, dst_port: int, seq: int, ack: int, flags: int,
            window: int, options: bytes, payload: bytes, ip_id: int) -> None:
        """Build one packet into the batch (sending the batch first when it is full)."""
        if self.count == self.max_batch:
            self.flush()
        if len(payload) > self.max_payload or len(options) > MAX_OPTIONS:
            self._count_error(errno.EMSGSIZE)     # cannot happen with the engine's MTU; never a crash
            return
        if len(options) % 4:
            options += b"\0" * (4 - len(options) % 4)
        i = self.count
        n = build_into(self.buffer, i * self.slot, src_ip, dst_ip, src_port, dst_port, seq, ack, flags, window,
                       options, payload, ip_id)
        self._lengths.append(n)
        self._dsts.append(dst_ip)
        self.count = i + 1

    def flush(self) -> None:
        """Send the batch; every packet is counted as sent or under its errno."""
        if not self.count:
            return
        if self._sendmmsg is None:
            self._send_one_by_one()
        else:
            self._send_batch()
        self.count = 0
        self._lengths.clear()
        self._dsts.clear()

    def close(self) -> None:
        self.sock.close()

    # ---- internals --------------------------------------------------------------------------
    def _name(self, dst_ip: int) -> tuple[ctypes.Array, int, str]:
        name = self._names.get(dst_ip)
        if name is None:
            raw = struct.pack("=H", socket.AF_INET) + struct.pack("!HI", 0, dst_ip) + bytes(8)
            sa = ctypes.create_string_buffer(raw, 16)
            name = self._names[dst_ip] = (sa, ctypes.addressof(sa), socket.inet_ntoa(struct.pack("!I", dst_ip)))
        return name

    def _send_batch(self) -> None:
        assert self._sendmmsg is not None
        msgs, iovs, base, iov_at, slot = self._msgs_view, self._iovs_view, self._data_at, self._iovs_at, self.slot
        for i, (n, dst) in enumerate(zip(self._lengths, self._dsts, strict=True)):
            _IOVEC.pack_into(iovs, i * 16, base + i * slot, n)
            _MMSG.pack_into(msgs, i * 64, self._name(dst)[1], 16, iov_at + i * 16, 1)
        at, total = 0, self.count
        while at < total:
            done = self._sendmmsg(self.fd, self._msgs_at + at * 64, total - at, 0)
            if done < 0:
                self._count_error(ctypes.get_errno())
                at += 1                     # that packet is lost and counted; the rest still go
            else:
                self.sent += done
                at += done

    def _send_one_by_one(self) -> None:
        for i, (n, dst) in enumerate(zip(self._lengths, self._dsts, strict=True)):
            try:
                self.sock.sendto(self.buffer[i * self.slot:i * self.slot + n], (self._name(dst)[2], 0))
                self.sent += 1
            except OSError as exc:
                self._count_error(exc.errno or 0)

    def _count_error(self, code: int) -> None:
        name = errno.errorcode.get(code, str(code))
        self.errors[name] = self.errors.get(name, 0) + 1
