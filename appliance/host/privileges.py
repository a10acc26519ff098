"""Least privilege: after opening what needs root, become a plain user that keeps only
CAP_NET_RAW and CAP_NET_ADMIN (ambient, so the children tcpcopyd spawns keep them too), with
every other capability gone from the bounding set and no_new_privs set, so no later execve
(a setuid binary, file capabilities) can give any back.

Runs in tcpcopyd's supervisor (before it spawns children) and in interceptd (after it opened
its captures and bound its socket). Linux only; uses prctl(2) and capset(2) through ctypes.
"""

from __future__ import annotations

import ctypes
import errno
import os
import pwd

from appliance.core.errors import ConfigError

CAP_NET_ADMIN = 12
CAP_NET_RAW = 13
KEPT = (1 << CAP_NET_ADMIN) | (1 << CAP_NET_RAW)
PR_SET_KEEPCAPS = 8
PR_CAPBSET_READ = 23
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
MAX_CAPS = 64                    # the kernel's capability sets are 64 bits wide
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_RAISE = 2
LINUX_CAPABILITY_VERSION_3 = 0x20080522


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


def lookup_user(name: str) -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(name)
    except KeyError:
        raise ConfigError(f"user = {name!r}: no such user (create it, e.g. useradd --system {name})") from None


def _drop_bounding_set(libc: ctypes.CDLL) -> None:
    """Every capability but the kept two leaves the bounding set (needs CAP_SETPCAP: still root).

    Only those still in it are dropped, so a container already limited to the two needs no
    CAP_SETPCAP. The kernel's last capability is found by EINVAL, not read from /proc/sys (hidden
    under the units' ProcSubset=pid)."""
    for cap in range(MAX_CAPS):
        present = libc.prctl(PR_CAPBSET_READ, cap, 0, 0, 0)
        if present < 0 and ctypes.get_errno() == errno.EINVAL:    # past the last capability
            return
        if present == 1 and not KEPT & (1 << cap) and libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"prctl(PR_CAPBSET_DROP, {cap}): {os.strerror(err)}")


def drop_to(name: str) -> None:
    """Become user `name` keeping only CAP_NET_RAW and CAP_NET_ADMIN; a no-op unless root.

    Runs in tcpcopyd's supervisor before it spawns children, and in interceptd. Afterwards the
    bounding set holds the two kept capabilities only and no_new_privs is set; both are inherited
    by every child."""
    if os.geteuid() != 0:
        return
    user = lookup_user(name)
    libc = ctypes.CDLL(None, use_errno=True)

    def check(result: int, what: str) -> None:
        if result != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"{what}: {os.strerror(err)}")

    _drop_bounding_set(libc)
    check(libc.prctl(PR_SET_KEEPCAPS, 1, 0, 0, 0), "prctl(PR_SET_KEEPCAPS)")
    os.setgroups([])
    os.setgid(user.pw_gid)
    os.setuid(user.pw_uid)
    header = _CapHeader(LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)(_CapData(KEPT, KEPT, KEPT), _CapData(0, 0, 0))
    check(libc.capset(ctypes.byref(header), data), "capset")
    for cap in (CAP_NET_RAW, CAP_NET_ADMIN):
        check(libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, cap, 0, 0), "prctl(PR_CAP_AMBIENT_RAISE)")
    check(libc.prctl(PR_SET_KEEPCAPS, 0, 0, 0, 0), "prctl(PR_SET_KEEPCAPS, 0)")
    check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(PR_SET_NO_NEW_PRIVS)")


def effective_capabilities() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("CapEff:"):
                return int(line.split()[1], 16)
    return 0


def has_net_capabilities() -> bool:
    """Root, or a user holding CAP_NET_RAW and CAP_NET_ADMIN (a systemd unit's AmbientCapabilities)."""
    return os.geteuid() == 0 or effective_capabilities() & KEPT == KEPT
