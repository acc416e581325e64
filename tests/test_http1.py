"""The lean HTTP/1.1 client: framing, keep-alive, bounds, failures, TLS, and parity with httpx.

Every test talks to a real loopback server: a scripted one that sends
exactly the bytes a case needs (and counts connections), or the simulator.
"""

from __future__ import annotations

import asyncio
import gzip
import socket
import ssl
import subprocess
import threading
import tracemalloc
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path

import anyio
import httpx
import pytest

from incident_fsm.demo.simulator import ServiceState, Simulator
from incident_fsm.detection.http1 import RECEIVE_SIZE, Http1Client, TransportFailed, suits
from incident_fsm.detection.payload import HealthSnapshot, ProbeFailure, ProbeResult
from incident_fsm.detection.probe import FetchFailed, HttpProbe, fetch
from incident_fsm.detection.targets import TargetClients
from incident_fsm.http_body import BodyRefused, BodyTooLarge
from incident_fsm.settings import AgentSettings

pytestmark = pytest.mark.anyio

Reply = bytes | Callable[[asyncio.StreamWriter], Awaitable[bool]]
JSON = b'{"ok": true}'


def answer(body: bytes = JSON, *, status: str = "200 OK", extra: str = "") -> bytes:
    return (f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n{extra}\r\n").encode() + body


class Scripted:
    """Answers each request with the next reply: bytes (the connection stays open) or a
    coroutine that writes what it likes and says whether the connection stays open."""

    def __init__(self, *replies: Reply) -> None:
        self.replies = list(replies)
        self.connections = 0
        self.requests: list[bytes] = []
        self.closed_by_client = asyncio.Event()
        self.port = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while self.replies:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    self.closed_by_client.set()
                    return
                self.requests.append(head)
                reply = self.replies.pop(0)
                try:
                    if isinstance(reply, bytes):
                        writer.write(reply)
                        await writer.drain()
                    elif not await reply(writer):
                        return
                except ConnectionError:  # hung up on while answering
                    self.closed_by_client.set()
                    return
            # Nothing more scripted: wait for the client to hang up.
            if not await reader.read(1):
                self.closed_by_client.set()
        finally:
            writer.close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@asynccontextmanager
async def serving(script: Scripted, *, tls: ssl.SSLContext | None = None
                  ) -> AsyncIterator[Scripted]:
    server = await asyncio.start_server(script.handle, "127.0.0.1", 0, ssl=tls)
    script.port = server.sockets[0].getsockname()[1]
    try:
        yield script
    finally:
        server.close()


async def get(client: Http1Client, path: str = "/health", *, limit: int = 1000) -> bytes:
    with anyio.fail_after(5):
        reply = await client.get(client_url(client, path), max_body=limit)
    assert reply.status == 200, reply
    return reply.body


def client_url(client: Http1Client, path: str) -> str:
    return client._origin + path


async def test_requests_share_one_kept_alive_connection_and_say_what_they_accept() -> None:
    async with serving(Scripted(*[answer()] * 20)) as server:
        client = Http1Client(server.url, user_agent="incident-fsm/test")
        for _ in range(20):
            assert await get(client) == JSON
        await client.aclose()
    assert server.connections == 1 and client.connections_opened == 1
    first = server.requests[0].decode()
    assert first.startswith("GET /health HTTP/1.1\r\n")
    assert f"Host: 127.0.0.1:{server.port}\r\n" in first
    assert "Accept-Encoding: gzip, deflate, identity\r\n" in first
    assert "User-Agent: incident-fsm/test\r\n" in first


async def test_chunked_gzip_and_interim_answers_are_read_whole() -> None:
    packed = gzip.compress(JSON)
    chunked = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Encoding: gzip\r\n\r\n"
               + f"{5:x};ext=1\r\n".encode() + packed[:5] + b"\r\n"
               + f"{len(packed) - 5:x}\r\n".encode() + packed[5:] + b"\r\n"
               + b"0\r\nX-Trailer: yes\r\n\r\n")
    interim = b"HTTP/1.1 100 Continue\r\n\r\n" + answer(b'{"n": 2}')

    async def in_pieces(writer: asyncio.StreamWriter) -> bool:
        for i in range(len(chunked)):  # one byte at a time: every boundary is crossed
            writer.write(chunked[i:i + 1])
            await writer.drain()
        return True

    async with serving(Scripted(in_pieces, interim, chunked)) as server:
        client = Http1Client(server.url)
        assert await get(client) == JSON
        assert await get(client) == b'{"n": 2}'
        assert await get(client) == JSON
    assert server.connections == 1


async def test_a_body_read_to_the_close_ends_the_connection() -> None:
    async def until_close(writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + JSON)
        await writer.drain()
        return False

    async with serving(Scripted(until_close, answer())) as server:
        client = Http1Client(server.url)
        assert await get(client) == JSON
        assert await get(client) == JSON
    assert server.connections == 2


async def test_an_answer_that_asks_to_close_is_not_followed_on_its_connection() -> None:
    http10 = answer().replace(b"HTTP/1.1", b"HTTP/1.0", 1)
    async with serving(Scripted(answer(extra="Connection: close\r\n"), http10, answer())
                       ) as server:
        client = Http1Client(server.url)
        for _ in range(3):  # the server would go on answering: the client must not ask it
            assert await get(client) == JSON
    assert server.connections == 3


async def test_a_connection_closed_while_idle_is_replaced_once() -> None:
    async def then_close(writer: asyncio.StreamWriter) -> bool:
        writer.write(answer())  # says nothing of closing: the client keeps it
        await writer.drain()
        return False

    async with serving(Scripted(then_close, answer())) as server:
        client = Http1Client(server.url)
        assert await get(client) == JSON
        await anyio.sleep(0.1)  # the server's close arrives while the connection is idle
        assert await get(client) == JSON
    assert server.connections == 2


async def test_a_stale_connection_the_client_has_not_noticed_is_retried_on_a_new_one() -> None:
    async def hang_up(writer: asyncio.StreamWriter) -> bool:
        return False  # reads the request, answers nothing

    async with serving(Scripted(answer(), hang_up, answer())) as server:
        client = Http1Client(server.url)
        assert await get(client) == JSON
        assert await get(client) == JSON  # the kept one is hung up on: sent again, once
    assert server.connections == 2


async def test_a_fresh_connection_closed_without_an_answer_fails_without_retrying() -> None:
    async def hang_up(writer: asyncio.StreamWriter) -> bool:
        return False

    async with serving(Scripted(hang_up, answer())) as server:
        client = Http1Client(server.url)
        with pytest.raises(TransportFailed, match="without answering"):
            await get(client)
    assert server.connections == 1


async def test_an_answer_cut_short_fails_and_its_connection_is_not_reused() -> None:
    async def cut(writer: asyncio.StreamWriter) -> bool:
        writer.write(answer(b'{"ok": true, "more": "x"}')[:-5])
        await writer.drain()
        return False

    async with serving(Scripted(cut, answer())) as server:
        client = Http1Client(server.url)
        with pytest.raises(TransportFailed, match="closed before the answer ended"):
            await get(client)
        assert await get(client) == JSON
    assert server.connections == 2


@pytest.mark.parametrize(("wire", "words"), [
    (b"SSH-2.0-OpenSSH_9.2\r\n\r\n", "not an HTTP/1.x answer"),
    (b"HTTP/1.1 2x0 OK\r\n\r\n", "not an HTTP/1.x answer"),
    (b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n", "malformed header"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
     "bad Content-Length"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "bad chunk size"),
    (b"HTTP/1.1 101 Switching Protocols\r\n\r\n", "switched protocols"),
])
async def test_an_answer_that_is_not_http_fails_and_closes(wire: bytes, words: str) -> None:
    async with serving(Scripted(wire, answer())) as server:
        client = Http1Client(server.url)
        with pytest.raises(TransportFailed, match=words):
            await get(client)
        assert await get(client) == JSON
    assert server.connections == 2


async def test_head_and_body_bounds_hold_before_and_while_reading() -> None:
    async def declared_huge(writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 50000000\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(3600)  # nothing of the body comes: refused on the header alone
        return False

    streamed = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                + b"".join(b"100\r\n" + b"a" * 256 + b"\r\n" for _ in range(8)) + b"0\r\n\r\n")
    endless_head = b"HTTP/1.1 200 OK\r\n" + b"X-Pad: " + b"p" * 70_000
    bomb = gzip.compress(b" " * 5_000_000)
    async with serving(Scripted(declared_huge, streamed, endless_head,
                                answer(bomb, extra="Content-Encoding: gzip\r\n"))) as server:
        client = Http1Client(server.url)
        with pytest.raises(BodyTooLarge) as too_large:
            await get(client)
        assert too_large.value.declared == 50_000_000
        with pytest.raises(BodyTooLarge):
            await get(client)
        with pytest.raises(TransportFailed, match="headers exceed"):
            await get(client)
        with pytest.raises(BodyTooLarge):
            await get(client, limit=10_000)
    assert server.connections == 4  # none of them was reused


async def test_an_unknown_content_encoding_is_refused() -> None:
    async with serving(Scripted(answer(extra="Content-Encoding: br\r\n"))) as server:
        with pytest.raises(BodyRefused, match="unsupported Content-Encoding"):
            await get(Http1Client(server.url))


async def test_fetch_bounds_a_trickling_answer_in_time_and_drops_its_connection() -> None:
    async def trickle(writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n")
        for _ in range(100):
            writer.write(b"a")
            await writer.drain()
            await asyncio.sleep(0.1)
        return True

    async with serving(Scripted(trickle, answer())) as server:
        client = Http1Client(server.url)
        with pytest.raises(FetchFailed, match=r"timed out after 0\.5s"):
            await fetch(client, server.url + "/health", time_limit=0.5)
        with anyio.fail_after(5):
            await server.closed_by_client.wait()
        assert (await fetch(client, server.url + "/health", time_limit=2)).body == JSON
    assert server.connections == 2


async def test_no_connection_is_a_connect_error_and_other_origins_are_refused() -> None:
    with anyio.fail_after(5):
        async with serving(Scripted()) as server:
            url = server.url
        client = Http1Client(url)
        with pytest.raises(TransportFailed, match=r"^ConnectError: "):
            await client.get(url + "/health", max_body=100)
    with pytest.raises(ValueError, match="is not on"):
        await client.get("http://127.0.0.1:1/elsewhere", max_body=100)
    with pytest.raises(ValueError, match="not an http"):
        Http1Client("ftp://example.org")


def self_signed(tmp_path: Path) -> tuple[Path, Path]:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=60)
    return cert, key


async def test_tls_is_verified_with_the_context_given(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert, key)
    async with serving(Scripted(answer(), answer()), tls=server_tls) as server:
        https = f"https://127.0.0.1:{server.port}"
        trusting = ssl.create_default_context(cafile=str(cert))
        assert await get(Http1Client(https, ssl_context=trusting)) == JSON
        with pytest.raises(TransportFailed, match="CERTIFICATE_VERIFY_FAILED"):
            await get(Http1Client(https, ssl_context=ssl.create_default_context()))


@pytest.mark.parametrize("tls", [False, True], ids=["tcp", "tls"])
async def test_answers_larger_than_one_read_to_two_clients_at_once_arrive_whole(
        tmp_path: Path, tls: bool) -> None:
    # Every connection reads into one shared buffer: interleaved reads must not mix.
    bodies = [bytes([ord("a") + i]) * (3 * RECEIVE_SIZE + 17) for i in range(2)]
    contexts: tuple[ssl.SSLContext | None, ssl.SSLContext | None] = (None, None)
    if tls:
        cert, key = self_signed(tmp_path)
        server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        server_tls.load_cert_chain(cert, key)
        contexts = (server_tls, ssl.create_default_context(cafile=str(cert)))
    async with serving(Scripted(*(answer(b) for b in bodies * 3)), tls=contexts[0]) as first, \
            serving(Scripted(*(answer(b) for b in bodies[::-1] * 3)), tls=contexts[0]) as second:
        scheme = "https" if tls else "http"
        clients = [Http1Client(f"{scheme}://127.0.0.1:{s.port}", ssl_context=contexts[1])
                   for s in (first, second)]
        try:
            for _ in range(3):
                got = await asyncio.gather(*(get(c, limit=4 * RECEIVE_SIZE) for c in clients))
                assert [len(b) for b in got] == [len(bodies[0])] * 2
                assert set(got[0]) != set(got[1]) and all(len(set(b)) == 1 for b in got)
        finally:
            for client in clients:
                await client.aclose()


async def test_a_poll_allocates_no_buffer_per_read() -> None:
    # asyncio's plain protocols allocate 256 KiB for every socket read (and shrink
    # it to what came). A thread serves the answers here, from one buffer, so that
    # only the client's allocations are counted.
    wire = answer()
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve() -> None:
        conn, _ = listener.accept()
        buffer = bytearray(4096)
        with conn:
            while conn.recv_into(buffer):
                conn.sendall(wire)

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    client = Http1Client(f"http://127.0.0.1:{port}")
    try:
        assert await get(client) == JSON  # connected, and the receive buffer made
        tracing = tracemalloc.is_tracing()  # under -X tracemalloc: leave it on
        if not tracing:
            tracemalloc.start()
        try:
            tracemalloc.reset_peak()
            before, _ = tracemalloc.get_traced_memory()
            for _ in range(20):
                assert await get(client) == JSON
            _, peak = tracemalloc.get_traced_memory()
        finally:
            if not tracing:
                tracemalloc.stop()
        assert peak - before < 64 * 1024, f"{peak - before} bytes at the peak of twenty polls"
    finally:
        await client.aclose()
        listener.close()
        server.join(5)


def without_latency(result: ProbeResult) -> ProbeResult:
    return replace(result, latency_ms=0.0)


@pytest.mark.parametrize("fault", [None, "429", "500", "garbage", "error", "huge"])
async def test_a_probe_reads_the_simulator_exactly_as_through_httpx(fault: str | None) -> None:
    state = ServiceState()
    if fault is not None:
        state.faults["/health/resources"] = fault
    async with Simulator(state) as sim, httpx.AsyncClient() as plain:
        lean = Http1Client(sim.base_url)
        results = []
        for client in (plain, lean):
            probe = HttpProbe(base_url=sim.base_url, endpoints=["/health/resources"],
                              client=client, timeout=3)
            results.append(without_latency(await probe.read_endpoint("/health/resources")))
        await lean.aclose()
    through_httpx, through_lean = results
    if fault is None:
        assert isinstance(through_lean, HealthSnapshot)
        assert through_lean == through_httpx
    else:
        assert isinstance(through_lean, ProbeFailure) and isinstance(through_httpx, ProbeFailure)
        assert (through_lean.cause, through_lean.reason, through_lean.retry_after) == (
            through_httpx.cause, through_httpx.reason, through_httpx.retry_after)


def test_the_lean_client_is_used_only_where_it_reads_as_httpx_would() -> None:
    assert suits("http://svc.internal:8000", {})
    assert suits("https://svc.example.org", {"NO_PROXY": "*"})
    assert not suits("https://svc.example.org", {"HTTPS_PROXY": "http://proxy:3128"})
    assert not suits("http://svc.internal", {"all_proxy": "socks5://proxy:1080"})
    assert not suits("https://user:secret@svc.example.org", {})
    clients = TargetClients(AgentSettings())
    fallback = clients.new()
    assert isinstance(clients.health("http://svc.internal", fallback=fallback, environ={}),
                      Http1Client)
    assert clients.health("http://svc.internal", fallback=fallback,
                          environ={"HTTP_PROXY": "http://proxy:3128"}) is fallback
