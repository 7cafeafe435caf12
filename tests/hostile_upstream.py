"""A hostile upstream for the relay (a third party, so a fake): a raw asyncio HTTP/1.1 server on
loopback that speaks the reelq upstream's two routes and then misbehaves as told.

`mode` picks the misbehaviour of status reads (`GET /v1/result/{id}`) and of the video:

- "huge": the status answer is `huge_bytes` of JSON-ish bytes, without Content-Length;
- "trickle": the status answer's headers come, then one body byte every `trickle_every` seconds;
- "bad-redirect": the task is completed, its video answers `302 Location: <bad_location>`;
- "trickle-video": the task is completed, its video trickles one byte at a time.

Used by tests/test_abuse_upstream.py and benchmarks/hostile_inputs.py (the relay worker's memory).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading

import orjson


class HostileUpstream:
    def __init__(self, mode: str, huge_bytes: int = 64 * 1024 * 1024, trickle_every: float = 0.2) -> None:
        self.mode = mode
        self.huge_bytes = huge_bytes
        self.trickle_every = trickle_every
        self.bad_location = "http://[::1"
        self.sent = 0  # body bytes of misbehaving answers written so far
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.base_events.Server | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> HostileUpstream:
        self._thread = threading.Thread(target=self._run, name="hostile-upstream", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the hostile upstream did not start")
        return self

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(10)

    def _run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        async with server:
            await self._stop.wait()
            server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(Exception):
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            method, path, _ = lines[0].split(" ", 2)
            length = 0
            for line in lines[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value.strip())
            if length:
                await reader.readexactly(length)
            await self._answer(method, path, writer)
        with contextlib.suppress(Exception):
            writer.close()

    async def _answer(self, method: str, path: str, writer: asyncio.StreamWriter) -> None:
        if method == "POST" and path == "/v1/vidu/videos":
            return await _json(writer, {"id": "up-1", "status": "queued"})
        if method == "GET" and path.startswith("/v1/result/"):
            if self.mode == "huge":
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n")
                writer.write(b"Connection: close\r\n\r\n")
                block = b'{"pad": "' + b"x" * (1 << 20)
                while self.sent < self.huge_bytes:
                    writer.write(block)
                    self.sent += len(block)
                    await writer.drain()
                return None
            if self.mode == "trickle":
                return await self._trickle(writer)
            url = f"{self.base_url}/video.mp4"
            return await _json(writer, {"id": "up-1", "status": "completed", "video_url": url})
        if method == "GET" and path == "/video.mp4":
            if self.mode == "bad-redirect":
                writer.write(
                    b"HTTP/1.1 302 Found\r\nLocation: " + self.bad_location.encode("latin-1")
                    + b"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                )
                return await writer.drain()
            return await self._trickle(writer, b"video/mp4")
        writer.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        await writer.drain()
        return None

    async def _trickle(self, writer: asyncio.StreamWriter, kind: bytes = b"application/json") -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: " + kind + b"\r\nContent-Length: 100000\r\n\r\n")
        assert self._stop is not None
        for _ in range(100000):
            writer.write(b" ")
            self.sent += 1
            await writer.drain()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self.trickle_every)
                return


async def _json(writer: asyncio.StreamWriter, data: object) -> None:
    body = orjson.dumps(data)
    writer.write(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    await writer.drain()
