"""CURVE keys for the interceptd -> tcpcopyd channel: making them, loading them, checking them.

interceptd is the CURVE server: it holds its secret key and accepts only the tcpcopyd public keys
found in its authorized-keys directory; tcpcopyd (each rewrite worker) holds its own secret key
and interceptd's public key, so it also refuses a publisher that is not that interceptd. The ZAP
check runs in interceptd's own loop (no thread); refusals are counted.

Key files use ZeroMQ's certificate format (`curve` section, `public-key = "Z85"`, and in the
`.key_secret` half `secret-key = "Z85"`), read here by our own bounded parser, which checks that
each key is 40 Z85 characters and that a secret key matches its public half.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import stat
from pathlib import Path
from typing import Any

import zmq
from zmq.utils import z85

from appliance.core.errors import ConfigError

log = logging.getLogger(__name__)

KEY_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}")   # no leading dot, no "/", at most 64
MAX_KEY_FILE = 4096              # a certificate is ~300 bytes; anything longer is not one
KEY_DIR_MODE = 0o750             # the packages make /etc/tcpcopy/curve root:tcpcopy 0750
PUBLIC_MODE = 0o644
SECRET_MODE = 0o600
_PUBLIC_BANNER = "#   ZeroMQ CURVE Public Certificate (tcpcopyctl keygen): give it to the peer\n\n"
_SECRET_BANNER = "#   ZeroMQ CURVE **Secret** Certificate (tcpcopyctl keygen): keep it on this host, mode 0600\n\n"


class KeygenError(Exception):
    """tcpcopyctl keygen refused: the message says what to do instead."""


# ---- reading key files ------------------------------------------------------------------------
def _z85_key(value: bytes, field: str) -> bytes:
    try:
        ok = len(value) == 40 and len(z85.decode(value)) == 32
    except (KeyError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"{field} is not a CURVE key (40 Z85 characters)")
    return value


def parse_key_file(data: bytes) -> tuple[bytes, bytes | None]:
    """(public, secret or None), both Z85, from a certificate's text; ValueError(reason) otherwise."""
    public = secret = None
    for raw in data.splitlines():
        line = raw.strip()
        if line.startswith(b"#"):
            continue
        name, sep, value = line.partition(b"=")
        name = name.strip()
        if not sep or name not in (b"public-key", b"secret-key"):
            continue
        key = _z85_key(value.strip(b" \t'\""), name.decode())
        if name == b"public-key":
            public = key
        else:
            secret = key
    if public is None:
        raise ValueError("no public-key line")
    if secret is not None and zmq.curve_public(secret) != public:
        raise ValueError("its secret-key does not belong to its public-key")
    return public, secret


def _read_bounded(fd: int) -> bytes:
    with os.fdopen(fd, "rb") as f:
        data = f.read(MAX_KEY_FILE + 1)
    if len(data) > MAX_KEY_FILE:
        raise ValueError(f"longer than {MAX_KEY_FILE} bytes: not a key file")
    return data


def read_public_key(path: str) -> bytes:
    """The Z85 public key of a .key (or .key_secret) file; OSError or ValueError(reason) otherwise."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise ValueError("not a regular file")
    return parse_key_file(_read_bounded(fd))[0]


def _open_secret(path: str, what: str) -> int:
    """An fd on the secret key file, refused (ConfigError) if it is a symlink, not a regular file,
    writable by group or others, or readable by others. Runs in the daemon at start."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as exc:
        if os.path.islink(path):
            raise ConfigError(f"{what} {path!r} is a symlink: name the key file itself") from None
        raise ConfigError(f"{what} {path!r}: cannot read a CURVE secret key ({exc.strerror}); "
                          "make one with: tcpcopyctl keygen --dir DIR NAME") from None
    info = os.fstat(fd)
    mode = stat.S_IMODE(info.st_mode)
    problem = ("is not a regular file" if not stat.S_ISREG(info.st_mode)
               else f"is writable by group or others (mode {mode:04o})" if mode & 0o022
               else f"is readable by others (mode {mode:04o})" if mode & 0o004 else "")
    if problem:
        os.close(fd)
        raise ConfigError(f"{what} {path!r} {problem}: a secret key must be readable by its daemon only "
                          f"(chmod 0600, or 0640 root:tcpcopy as the packages make it)")
    return fd


def load_secret(path: str, what: str) -> tuple[bytes, bytes]:
    """(public, secret) from a .key_secret file; ConfigError naming the file otherwise.

    Runs at start in tcpcopyd's supervisor and interceptd (config validation, exit 78) and again
    in each rewrite worker."""
    fd = _open_secret(path, what)
    try:
        public, secret = parse_key_file(_read_bounded(fd))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{what} {path!r}: not a CURVE key file ({exc}); "
                          "make one with: tcpcopyctl keygen --dir DIR NAME") from None
    if not secret:
        raise ConfigError(f"{what} {path!r} holds no secret key (is it the .key_secret file?)")
    return public, secret


def load_public(path: str, what: str) -> bytes:
    try:
        return read_public_key(path)
    except (OSError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else exc
        raise ConfigError(f"{what} {path!r}: cannot read a CURVE public key ({reason})") from None


# ---- making key pairs -------------------------------------------------------------------------
def check_key_name(name: str) -> str:
    if not KEY_NAME.fullmatch(name):
        raise KeygenError(f"key name {name!r}: use 1-64 of A-Z a-z 0-9 _ . - (not starting with a dot)")
    return name


def _open_key_dir(directory: str) -> int:
    """An fd on the key directory, made (0750) if missing. Refused if it is a symlink or owned by
    another user than this one (root, as the packages run it); group write and any access by
    others are taken away (0750 or stricter)."""
    parent = os.path.dirname(os.path.abspath(directory))
    os.makedirs(parent, exist_ok=True)
    try:
        os.mkdir(directory, KEY_DIR_MODE)
    except FileExistsError:
        pass
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        kind = "a symlink" if os.path.islink(directory) else f"not usable ({exc.strerror})"
        raise KeygenError(f"key directory {directory!r} is {kind}: give a real directory") from None
    info = os.fstat(fd)
    if info.st_uid != os.geteuid():
        os.close(fd)
        raise KeygenError(f"key directory {directory!r} belongs to uid {info.st_uid}, not to uid "
                          f"{os.geteuid()} running keygen: its owner could swap the keys")
    mode = stat.S_IMODE(info.st_mode)
    if mode & ~KEY_DIR_MODE:
        os.fchmod(fd, mode & KEY_DIR_MODE)       # decision: tighten, not refuse: it is ours
    return fd


def _key_texts(public: bytes, secret: bytes) -> tuple[str, str]:
    pub, sec = public.decode(), secret.decode()
    body = f'metadata\ncurve\n    public-key = "{pub}"\n'
    return _PUBLIC_BANNER + body, _SECRET_BANNER + body + f'    secret-key = "{sec}"\n'


def _install(dir_fd: int, name: str, text: str, mode: int, force: bool) -> None:
    """Write `name` in the directory: a fresh temporary file (O_EXCL|O_NOFOLLOW, so nothing planted
    there is written through) is linked to the name (fails if anything is there) or, with force,
    renamed over it (replacing a planted file or symlink itself, never writing through it)."""
    tmp = f".{name}.{secrets.token_hex(6)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=dir_fd)
    try:
        with os.fdopen(fd, "w") as f:
            os.fchmod(f.fileno(), mode)          # whatever the umask
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        if force:
            os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        else:
            os.link(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd, follow_symlinks=False)
    finally:
        try:
            os.unlink(tmp, dir_fd=dir_fd)
        except FileNotFoundError:
            pass


def keygen(directory: str, name: str, force: bool = False) -> tuple[Path, Path]:
    """Write NAME.key (public, 0644, to copy to the peer) and NAME.key_secret (0600) in directory.

    Runs in tcpcopyctl (as root from the packages' postinst). Refuses (KeygenError) a bad name,
    a symlinked or foreign directory, and an existing pair unless `force`."""
    check_key_name(name)
    public_name, secret_name = f"{name}.key", f"{name}.key_secret"
    dir_fd = _open_key_dir(directory)
    try:
        if not force:
            for existing in (public_name, secret_name):
                try:
                    os.lstat(existing, dir_fd=dir_fd)
                except FileNotFoundError:
                    continue
                raise KeygenError(f"{os.path.join(directory, existing)} exists: keep it, or replace the "
                                  "pair with --force (the peers then need the new public key)")
        public, secret = zmq.curve_keypair()
        public_text, secret_text = _key_texts(public, secret)
        try:
            _install(dir_fd, secret_name, secret_text, SECRET_MODE, force)
            _install(dir_fd, public_name, public_text, PUBLIC_MODE, force)
        except FileExistsError:
            raise KeygenError(f"a key file for {name!r} appeared in {directory!r} while writing: "
                              "look at who else writes there") from None
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return Path(directory, public_name), Path(directory, secret_name)


# ---- sockets ----------------------------------------------------------------------------------
def make_server(sock: zmq.Socket[Any], secret_file: str) -> None:
    """Runs in interceptd: the PUB socket becomes a CURVE server (call before bind)."""
    public, secret = load_secret(secret_file, "secret_key")
    sock.curve_secretkey = secret
    sock.curve_publickey = public
    sock.curve_server = True


def make_client(sock: zmq.Socket[Any], secret_file: str, server_public_file: str) -> None:
    """Runs in each tcpcopyd rewrite worker: the SUB socket talks CURVE (call before connect)."""
    public, secret = load_secret(secret_file, "secret_key")
    sock.curve_secretkey = secret
    sock.curve_publickey = public
    sock.curve_serverkey = load_public(server_public_file, "intercept_public_key")


class KeyChecker:
    """ZAP handler polled from interceptd's loop: accepts the authorized public keys only.

    The directory is read again when an unknown key knocks, so adding a tcpcopyd needs no restart.
    A file there that is not a key is skipped with one warning (not one per knock).
    """

    ZAP_ENDPOINT = "inproc://zeromq.zap.01"

    def __init__(self, context: zmq.Context[Any], authorized_dir: str) -> None:
        if not os.path.isdir(authorized_dir):
            raise ConfigError(f"authorized_keys {authorized_dir!r}: no such directory of tcpcopyd public keys")
        self.dir = authorized_dir
        self.refused = 0
        self.accepted = 0
        self._warned: set[tuple[str, str]] = set()
        self.keys = self._load()
        self.socket = context.socket(zmq.REP)
        self.socket.linger = 0
        self.socket.bind(self.ZAP_ENDPOINT)

    def _load(self) -> set[bytes]:
        keys = set()
        for path in sorted(Path(self.dir).glob("*.key")):
            try:
                keys.add(z85.decode(read_public_key(str(path))))
            except (OSError, ValueError) as exc:
                reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
                if (str(path), reason) not in self._warned:
                    self._warned.add((str(path), reason))
                    log.warning("authorized key %s skipped: %s", path, reason)
        return keys

    def handle(self) -> None:
        while True:
            try:
                msg = self.socket.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            self.socket.send_multipart(self._answer(msg))

    def _answer(self, msg: list[bytes]) -> list[bytes]:
        if len(msg) < 6:
            self.refused += 1
            return [b"1.0", msg[1] if len(msg) > 1 else b"", b"400", b"malformed request", b"", b""]
        version, request_id, _domain, _address, _identity, mechanism, *credentials = msg
        key = credentials[0] if credentials else b""
        if mechanism == b"CURVE" and key not in self.keys:
            self.keys = self._load()
        if version == b"1.0" and mechanism == b"CURVE" and key in self.keys:
            self.accepted += 1
            return [version, request_id, b"200", b"OK", z85.encode(key), b""]
        self.refused += 1
        return [b"1.0", request_id, b"400", b"key not authorized", b"", b""]

    def stop(self) -> None:
        self.socket.close(linger=0)
