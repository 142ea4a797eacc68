"""A stub OpenAI-compatible completion server (standard library only), for the serving
scenario's tests and benchmark: a stand-in for a server's *protocol*, never measured.

It answers GET /v1/models and streams POST /v1/completions as server-sent events in
chunked transfer encoding (as uvicorn does): after `ttft_s` the first token, then one
token every `itl_s`, up to the request's max_tokens. At most `capacity` requests generate
at once; the others wait in arrival order, so a load above capacity / service time piles
up as a real server's queue does. `style` picks what each chunk carries:
- "token_ids": `choices[0].token_ids` and a running usage (vLLM with return_token_ids);
- "usage": a running usage on every chunk, no ids (continuous_usage_stats);
- "text": text only, the usage total in the last event (transformers serve);
Faults: `fail_status` answers every completion with that HTTP status; `error_event`
streams an error event instead of tokens; `die_after` exits the process (os._exit) when
that many completions have started; `never_ready` answers /v1/models with 503.

In a thread: `with StubServer(...) as stub:` (stub.port, stub.served: per request the
server's own times of each chunk written). As a process (the harness starts servers as
commands): `python tests/support/stub_openai.py --port N [--ttft-s ...]`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import threading
import time
from dataclasses import dataclass, field


@dataclass
class StubSettings:
    ttft_s: float = 0.0
    itl_s: float = 0.0
    capacity: int = 1_000_000
    style: str = "token_ids"
    fail_status: int | None = None
    error_event: bool = False
    die_after: int | None = None
    never_ready: bool = False


@dataclass
class Served:
    """One completion as the stub served it (its own perf_counter times)."""

    received_s: float
    chunk_times_s: list[float] = field(default_factory=list)
    body: dict = field(default_factory=dict)


def _chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


def _event(obj: dict | str) -> bytes:
    payload = obj if isinstance(obj, str) else json.dumps(obj)
    return _chunk(f"data: {payload}\n\n".encode())


class StubApp:
    def __init__(self, settings: StubSettings) -> None:
        self.s = settings
        self.served: list[Served] = []
        self.started = 0
        self._slots: asyncio.Semaphore | None = None

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request_line = (await reader.readline()).decode()
            headers = {}
            while (line := await reader.readline()) not in (b"\r\n", b"\n", b""):
                k, _, v = line.decode().partition(":")
                headers[k.strip().lower()] = v.strip()
            body = await reader.readexactly(int(headers.get("content-length", "0") or 0))
            method, path = request_line.split(" ")[:2]
            if method == "GET" and path == "/v1/models":
                await self._models(writer)
            elif method == "POST" and path == "/v1/completions":
                await self._completion(writer, json.loads(body or b"{}"))
            else:
                writer.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def _models(self, writer: asyncio.StreamWriter) -> None:
        if self.s.never_ready:
            writer.write(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            return
        data = json.dumps({"object": "list", "data": [{"id": "stub", "object": "model"}]}).encode()
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
                     + str(len(data)).encode() + b"\r\nConnection: close\r\n\r\n" + data)

    async def _completion(self, writer: asyncio.StreamWriter, body: dict) -> None:
        self.started += 1
        if self.s.die_after is not None and self.started > self.s.die_after:
            print(f"stub: dying at completion {self.started} (die_after={self.s.die_after})", flush=True)
            os._exit(3)
        if self.s.fail_status:
            msg = json.dumps({"error": {"message": "stub refuses"}}).encode()
            writer.write(f"HTTP/1.1 {self.s.fail_status} Error\r\nContent-Length: {len(msg)}\r\n"
                         "Connection: close\r\n\r\n".encode() + msg)
            return
        served = Served(time.perf_counter(), body=body)
        self.served.append(served)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n"
                     b"Connection: close\r\n\r\n")
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.s.capacity)
        async with self._slots:
            if self.s.error_event:
                writer.write(_event({"error": {"message": "stub error event"}}) + _chunk(b""))
                return
            await self._stream(writer, served, int(body.get("max_tokens", 16)))

    async def _stream(self, writer: asyncio.StreamWriter, served: Served, n: int) -> None:
        style = self.s.style
        start = time.perf_counter()
        for i in range(n):
            due = start + self.s.ttft_s + i * self.s.itl_s
            if (delay := due - time.perf_counter()) > 0:
                await asyncio.sleep(delay)
            choice: dict = {"index": 0, "text": f"t{i} ", "finish_reason": "length" if i == n - 1 else None}
            obj: dict = {"object": "text_completion", "choices": [choice]}
            if style == "token_ids":
                choice["token_ids"] = [i]
            if style in ("token_ids", "usage"):
                obj["usage"] = {"prompt_tokens": 3, "completion_tokens": i + 1, "total_tokens": i + 4}
            writer.write(_event(obj))
            await writer.drain()
            served.chunk_times_s.append(time.perf_counter())
        if style == "text":
            writer.write(_event({"choices": [{"index": 0, "text": "", "finish_reason": "length"}],
                                 "usage": {"prompt_tokens": 3, "completion_tokens": n, "total_tokens": n + 3}}))
        else:
            writer.write(_event("[DONE]"))
        writer.write(_chunk(b""))


class StubServer:
    """The stub on a loopback port, in a thread of this process."""

    def __init__(self, **settings) -> None:
        self.app = StubApp(StubSettings(**settings))
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="stub-openai", daemon=True)

    @property
    def served(self) -> list[Served]:
        return self.app.served

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(asyncio.start_server(self.app.handle, "127.0.0.1", 0))
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()
        server.close()

    def __enter__(self) -> StubServer:
        self._thread.start()
        self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="stub OpenAI completion server")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--ttft-s", type=float, default=0.0)
    ap.add_argument("--itl-s", type=float, default=0.0)
    ap.add_argument("--capacity", type=int, default=1_000_000)
    ap.add_argument("--style", default="token_ids", choices=["token_ids", "usage", "text"])
    ap.add_argument("--fail-status", type=int, default=None)
    ap.add_argument("--die-after", type=int, default=None)
    ap.add_argument("--never-ready", action="store_true")
    ap.add_argument("--start-delay-s", type=float, default=0.0)
    a = ap.parse_args(argv)
    app = StubApp(StubSettings(ttft_s=a.ttft_s, itl_s=a.itl_s, capacity=a.capacity, style=a.style,
                               fail_status=a.fail_status, die_after=a.die_after, never_ready=a.never_ready))
    time.sleep(a.start_delay_s)  # a server's start-up: what model_load_s measures

    async def serve() -> None:
        server = await asyncio.start_server(app.handle, a.host, a.port)
        print(f"stub: listening on {a.host}:{a.port}", flush=True)
        async with server:
            await server.serve_forever()

    asyncio.run(serve())


if __name__ == "__main__":
    main(sys.argv[1:])
