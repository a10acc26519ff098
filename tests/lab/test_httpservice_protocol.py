"""httpservice's connection protocol driven directly with a fake transport: no sockets, no root."""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any

import pytest

from appliance.lab.httpservice import (
    BODY,
    CLOSING_RESPONSE,
    KEEP_ALIVE_RESPONSE,
    BadRequest,
    HttpConnection,
    Recorder,
    Service,
    parse_head,
)
from appliance.lab.loadconn import ClientConnection, get_request, post_request


class FakeTransport(asyncio.Transport):
    def __init__(self, peer: tuple[str, int] = ("198.18.0.1", 40000)) -> None:
        super().__init__()
        self.peer = peer
        self.written = bytearray()
        self.closed = False
        self.protocol: Any = None

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": self.peer, "sockname": ("198.18.0.2", 8080)}.get(name, default)

    def write(self, data: bytes) -> None:  # type: ignore[override]
        self.written += data

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            if self.protocol is not None:
                self.protocol.connection_lost(None)

    def abort(self) -> None:
        self.close()

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


class ListRecorder(Recorder):
    def __init__(self) -> None:
        super().__init__(None)
        self.records: list[dict[str, Any]] = []

    def write(self, record: dict[str, Any]) -> None:
        self.records.append(record)


def connect(delay_seconds: float = 0.0) -> tuple[HttpConnection, FakeTransport, ListRecorder, Service]:
    recorder = ListRecorder()
    service = Service(recorder, delay_seconds)
    conn = HttpConnection(service)
    transport = FakeTransport()
    transport.protocol = conn
    conn.connection_made(transport)
    return conn, transport, recorder, service


def test_body_is_64_bytes_and_responses_are_well_formed() -> None:
    assert len(BODY) == 64
    assert KEEP_ALIVE_RESPONSE.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"Content-Length: 64\r\n" in KEEP_ALIVE_RESPONSE
    assert b"Connection: close\r\n" in CLOSING_RESPONSE


def test_parse_head_contract() -> None:
    assert parse_head(b"GET / HTTP/1.1\r\nHost: x") == (True, 0)
    assert parse_head(b"GET / HTTP/1.0\r\nHost: x") == (False, 0)
    assert parse_head(b"POST / HTTP/1.1\r\ncontent-length: 12\r\nConnection: Close") == (False, 12)
    for head, status in ((b"GARBAGE", 400), (b"GET / HTTP/1.1\r\nno-colon", 400),
                         (b"POST / HTTP/1.1\r\nContent-Length: x", 400),
                         (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked", 501)):
        with pytest.raises(BadRequest) as caught:
            parse_head(head)
        assert caught.value.status == status


def test_pipelined_requests_split_anywhere_get_one_response_each() -> None:
    body = bytes(range(256)) * 40
    stream = (get_request("h", "/1") + post_request("h", "/2", body) + get_request("h", "/3")
              + post_request("h", "/4", b"x" * 10) + get_request("h", "/5", close=True))
    for chunk_size in (1, 7, 100, 4096, len(stream)):
        conn, transport, recorder, _ = connect()
        for i in range(0, len(stream), chunk_size):
            conn.data_received(stream[i:i + chunk_size])
        assert bytes(transport.written) == KEEP_ALIVE_RESPONSE * 4 + CLOSING_RESPONSE
        assert transport.closed
        [record] = recorder.records
        assert record["requests"] == 5
        assert record["bytes"] == len(stream)
        assert record["sha256"] == hashlib.sha256(stream).hexdigest()
        assert record["peer"] == "198.18.0.1:40000"
        assert record["open"] is False


def test_bad_request_is_answered_and_closed() -> None:
    conn, transport, recorder, _ = connect()
    conn.data_received(get_request("h", "/ok") + b"NONSENSE\r\n\r\n" + get_request("h", "/never"))
    assert bytes(transport.written).startswith(KEEP_ALIVE_RESPONSE + b"HTTP/1.1 400 ")
    assert bytes(transport.written).count(b"HTTP/1.1") == 2
    assert transport.closed
    assert recorder.records[0]["requests"] == 1


def test_snapshot_and_shutdown_mark_open_connections() -> None:
    conn, transport, recorder, service = connect()
    conn.data_received(get_request("h", "/1"))
    service.snapshot()
    assert recorder.records[-1]["open"] is True and recorder.records[-1]["closed"] is None
    service.shutdown()
    assert len(recorder.records) == 2
    assert recorder.records[-1]["open"] is True
    assert transport.closed


def test_delayed_responses_keep_order_and_wait() -> None:
    async def scenario() -> tuple[bytes, bytes, bool]:
        conn, transport, _, _ = connect(delay_seconds=0.05)
        conn.data_received(get_request("h", "/1") + get_request("h", "/2"))
        await asyncio.sleep(0.01)
        conn.data_received(get_request("h", "/3", close=True))
        early = bytes(transport.written)
        await asyncio.sleep(0.2)
        return early, bytes(transport.written), transport.closed

    early, late, closed = asyncio.run(scenario())
    assert early == b""
    assert late == KEEP_ALIVE_RESPONSE * 2 + CLOSING_RESPONSE
    assert closed


def test_client_parser_counts_responses_split_anywhere() -> None:
    async def scenario(chunk: int) -> tuple[int, int]:
        client = ClientConnection()
        client.connection_made(FakeTransport())
        stream = KEEP_ALIVE_RESPONSE * 3 + b"HTTP/1.1 404 Not Found\r\nContent-Length: 3\r\n\r\nno!"
        for i in range(0, len(stream), chunk):
            client.data_received(stream[i:i + chunk])
        return client.responses, client.ok

    for chunk in (1, 5, 64, 1000):
        assert asyncio.run(scenario(chunk)) == (4, 3)
