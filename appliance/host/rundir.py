"""tcpcopyd's run directory and control socket: who may use them.

Runs in tcpcopyd's supervisor: `prepare` before it binds its sockets there, `protect_control_socket`
right after, `hand_over` just before it becomes `user`. Nothing here follows a symlink: the
directory is opened O_NOFOLLOW, checked and changed through its fd (fchown, fchmod), the sockets
in it are changed relative to that fd without following links.

A run directory is refused (ConfigError: exit 78) when it is a symlink, belongs to anyone but the
daemon's user, or is writable by group or others: whoever can write there can replace the control
socket and answer `tcpcopyctl`, or read the children's queues.
"""

from __future__ import annotations

import grp
import os
import pwd
import stat
from collections.abc import Iterator
from contextlib import contextmanager

from appliance.core.errors import ConfigError

SOCKETS = ("ctl", "stats", "runtime")
CONTROL = "ctl"
NEW_DIR_MODE = 0o700
GROUP_DIR_MODE = 0o750


def allowed_owners(user: str = "") -> frozenset[int]:
    """The uids a run directory may belong to: this process's, and when root about to become
    `user`, that user's too (an earlier run handed the directory over)."""
    owners = {os.geteuid()}
    if user and os.geteuid() == 0:
        owners.add(pwd.getpwnam(user).pw_uid)
    return frozenset(owners)


@contextmanager
def opened(path: str, owners: frozenset[int]) -> Iterator[int]:
    """An fd on the run directory, after checking it; ConfigError naming the problem otherwise."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        if os.path.islink(path):
            raise ConfigError(f"run_dir {path!r} is a symlink: give the directory itself") from None
        raise ConfigError(f"run_dir {path!r}: {exc.strerror}") from None
    try:
        info = os.fstat(fd)
        mode = stat.S_IMODE(info.st_mode)
        if info.st_uid not in owners:
            raise ConfigError(f"run_dir {path!r} belongs to uid {info.st_uid}, not to tcpcopyd's user "
                              f"(uid {' or '.join(map(str, sorted(owners)))}): remove it, tcpcopyd makes its own")
        if mode & 0o022:
            raise ConfigError(f"run_dir {path!r} is writable by group or others (mode {mode:04o}): "
                              "chmod 0700, or remove it and tcpcopyd makes its own")
        yield fd
    finally:
        os.close(fd)


def prepare(path: str, user: str = "") -> None:
    """Make the run directory (0700) if missing and check it: see `opened`."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    try:
        os.mkdir(path, NEW_DIR_MODE)
    except FileExistsError:
        pass
    with opened(path, allowed_owners(user)):
        pass


def _chmod_socket(dir_fd: int, name: str, mode: int) -> None:
    if not stat.S_ISSOCK(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode):
        raise OSError(f"run_dir: {name} is not the socket just bound")
    os.chmod(name, mode, dir_fd=dir_fd, follow_symlinks=False)


def protect_control_socket(path: str, group: str, user: str = "") -> None:
    """Only root (or the daemon's user), or members of `group`, may talk to the control socket:
    0600, or the directory 0750 and the socket 0660 for the group. `group` was checked when the
    configuration was read (it exists and this process may give it files)."""
    with opened(path, allowed_owners(user)) as fd:
        if not group:
            _chmod_socket(fd, CONTROL, 0o600)
            return
        gid = grp.getgrnam(group).gr_gid
        os.fchown(fd, -1, gid)
        os.fchmod(fd, GROUP_DIR_MODE)
        os.chown(CONTROL, -1, gid, dir_fd=fd, follow_symlinks=False)
        _chmod_socket(fd, CONTROL, 0o660)


def hand_over(path: str, user: str) -> None:
    """The directory and its sockets now belong to `user` (called as root, before the drop)."""
    uid = pwd.getpwnam(user).pw_uid
    with opened(path, allowed_owners(user)) as fd:
        os.fchown(fd, uid, -1)
        for name in SOCKETS:
            os.chown(name, uid, -1, dir_fd=fd, follow_symlinks=False)
