"""CURVE keys for the interceptd -> tcpcopyd channel: making them, loading them, checking them.

interceptd is the CURVE server: it holds its secret key and accepts only the tcpcopyd public keys
found in its authorized-keys directory; tcpcopyd (each rewrite worker) holds its own secret key
and interceptd's public key, so it also refuses a publisher that is not that interceptd. The ZAP
check runs in interceptd's own loop (no thread); refusals are counted.
"""

from __future__ import annotations

import os
from pathlib import Path

import zmq
import zmq.auth
from zmq.utils import z85

from appliance.errors import ConfigError


def keygen(directory: str, name: str) -> tuple[Path, Path]:
    """Write NAME.key (public, to copy to the peer) and NAME.key_secret (mode 0600) in directory."""
    os.makedirs(directory, mode=0o700, exist_ok=True)
    public, secret = zmq.auth.create_certificates(directory, name)
    os.chmod(secret, 0o600)
    return Path(public), Path(secret)


def load_secret(path: str, what: str) -> tuple[bytes, bytes]:
    """(public, secret) from a .key_secret file; ConfigError naming the file otherwise."""
    try:
        public, secret = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{what} {path!r}: cannot read a CURVE secret key ({exc}); "
                          "make one with: tcpcopyctl keygen --dir DIR NAME") from None
    if not secret:
        raise ConfigError(f"{what} {path!r} holds no secret key (is it the .key_secret file?)")
    return public, secret


def load_public(path: str, what: str) -> bytes:
    try:
        public, _ = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{what} {path!r}: cannot read a CURVE public key ({exc})") from None
    return public


def make_server(sock: zmq.Socket, secret_file: str) -> None:
    """Runs in interceptd: the PUB socket becomes a CURVE server (call before bind)."""
    public, secret = load_secret(secret_file, "secret_key")
    sock.curve_secretkey = secret
    sock.curve_publickey = public
    sock.curve_server = True


def make_client(sock: zmq.Socket, secret_file: str, server_public_file: str) -> None:
    """Runs in each tcpcopyd rewrite worker: the SUB socket talks CURVE (call before connect)."""
    public, secret = load_secret(secret_file, "secret_key")
    sock.curve_secretkey = secret
    sock.curve_publickey = public
    sock.curve_serverkey = load_public(server_public_file, "intercept_public_key")


class KeyChecker:
    """ZAP handler polled from interceptd's loop: accepts the authorized public keys only.

    The directory is read again when an unknown key knocks, so adding a tcpcopyd needs no restart.
    """

    ZAP_ENDPOINT = "inproc://zeromq.zap.01"

    def __init__(self, context: zmq.Context, authorized_dir: str) -> None:
        if not os.path.isdir(authorized_dir):
            raise ConfigError(f"authorized_keys {authorized_dir!r}: no such directory of tcpcopyd public keys")
        self.dir = authorized_dir
        self.refused = 0
        self.accepted = 0
        self.keys = self._load()
        self.socket = context.socket(zmq.REP)
        self.socket.linger = 0
        self.socket.bind(self.ZAP_ENDPOINT)

    def _load(self) -> set[bytes]:
        keys = set()
        for path in Path(self.dir).glob("*.key"):
            try:
                public, _ = zmq.auth.load_certificate(str(path))
            except (OSError, ValueError):
                continue
            keys.add(z85.decode(public))
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
