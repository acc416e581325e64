"""Bounded body reads: the bound holds for declared, streamed and compressed bodies."""

from __future__ import annotations

import gzip
import zlib
from collections.abc import AsyncIterator

import httpx
import pytest
import respx

from incident_fsm.http_body import BodyRefused, BodyTooLarge, drain_capped, read_capped

pytestmark = pytest.mark.anyio

URL = "https://peer.test/answer"
LIMIT = 1000


async def read(response: httpx.Response, *, drain: bool = False) -> bytes | int:
    with respx.mock:
        respx.get(URL).mock(return_value=response)
        async with httpx.AsyncClient() as client, client.stream("GET", URL) as answer:
            if drain:
                return await drain_capped(answer, limit=LIMIT)
            return await read_capped(answer, limit=LIMIT)


async def chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


async def test_a_body_within_the_bound_is_read_whole_and_inflated() -> None:
    assert await read(httpx.Response(200, content=b"a" * LIMIT)) == b"a" * LIMIT
    for encoding, packed in (("gzip", gzip.compress(b'{"ok": 1}')),
                             ("deflate", zlib.compress(b'{"ok": 1}'))):
        answer = httpx.Response(200, content=packed, headers={"Content-Encoding": encoding})
        assert await read(answer) == b'{"ok": 1}'


async def test_more_than_the_bound_is_refused_with_the_status_and_without_the_body() -> None:
    answers = [
        httpx.Response(503, content=b"s" * (LIMIT + 1)),  # declared
        httpx.Response(503, content=chunks(b"s" * 600, b"s" * 600)),  # only found by reading
        httpx.Response(503, content=gzip.compress(b"s" * (LIMIT + 1)),
                       headers={"Content-Encoding": "gzip"}),
    ]
    for answer in answers:
        with pytest.raises(BodyTooLarge) as caught:
            await read(answer)
        assert str(caught.value) == f"response larger than {LIMIT} bytes"
        assert caught.value.status == 503


async def test_a_compressed_bomb_is_never_inflated_past_the_bound() -> None:
    inflated: list[int] = []
    real = zlib.decompressobj

    class Counting:
        def __init__(self, wbits: int) -> None:
            self._inner = real(wbits)

        def decompress(self, data: bytes, max_length: int = 0) -> bytes:
            out = self._inner.decompress(data, max_length)
            inflated.append(len(out))
            return out

        @property
        def unconsumed_tail(self) -> bytes:
            return self._inner.unconsumed_tail

    bomb = zlib.compress(b"\0" * (64 * 1024 * 1024))  # about 64 KiB on the wire
    # Streamed content: a Response made from bytes would inflate them itself, at once.
    answer = httpx.Response(200, content=chunks(bomb), headers={"Content-Encoding": "deflate"})
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(zlib, "decompressobj", Counting)
        with pytest.raises(BodyTooLarge):
            await read(answer)
    assert sum(inflated) <= LIMIT + 1


async def test_unusable_encodings_are_refused() -> None:
    for headers, content in (({"Content-Encoding": "br"}, b"..."),
                             ({"Content-Encoding": "gzip"}, b"not gzip at all")):
        with pytest.raises(BodyRefused):
            await read(httpx.Response(200, content=chunks(content), headers=headers))


async def test_a_drained_body_is_counted_on_the_wire_and_bounded() -> None:
    assert await read(httpx.Response(200, content=b"d" * LIMIT), drain=True) == LIMIT
    with pytest.raises(BodyTooLarge):
        await read(httpx.Response(200, content=chunks(b"d" * 600, b"d" * 600)), drain=True)
