"""The load generator: streamed `/v1/completions` requests over loopback HTTP/1.1, on the
standard library's asyncio alone (no client library between the wire and the clock).

Each request is sent at its scheduled arrival (schedule.py), or as soon after as a slot
frees when max_concurrency caps the requests in flight, on a connection of its own
(`Connection: close`). The client stamps, on `time.perf_counter()`: the scheduled arrival,
when the request was written to the socket, and when each piece of the response stream was
read (every server-sent event read in one `read` shares its stamp). Streams are parsed as
the server writes them: chunked transfer encoding, a Content-Length body, or a body that
ends when the connection closes.

Tokens per streamed chunk, best first (the method is recorded per request):
- `token_ids`: the chunk's own token ids (vLLM's `return_token_ids`): exact, with the ids;
- `usage_per_chunk`: the growth of the running `usage.completion_tokens` sent with every
  chunk (`stream_options.continuous_usage_stats`): exact;
- `text_events+usage_total`: one token per event that carries text, and the total from the
  final `usage` (transformers serve). A token whose text is held back (an incomplete UTF-8
  sequence, a skipped special token) has no event of its own; those tokens are stamped at
  the last event. TTFT, TPOT and E2E stay exact (first and last event, the server's total);
  ITL is then approximate, and the result says so;
- `text_events`: one token per text event, with no total to check it against.

The load does not outlive a failure: the first request that errs (an HTTP error status, an
`error` event, a stream that ends unfinished, a refused connection, a timeout) stops the
dispatch, cancels the requests in flight and raises LoadFailed.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from llenergymeasure.backends.registry import RequestRecord

MAX_ERROR_BODY = 64 * 1024  # bytes of an error response kept for the message
READ_SIZE = 64 * 1024
METHODS = ("token_ids", "usage_per_chunk", "text_events+usage_total", "text_events")


class LoadFailed(RuntimeError):
    """A request of the load failed; the message says which and how."""


@dataclass(frozen=True)
class Target:
    host: str
    port: int
    path: str = "/v1/completions"


@dataclass(frozen=True)
class PlannedRequest:
    index: int  # position in the schedule
    arrival_s: float  # seconds after the load's origin
    body: bytes  # the JSON body, encoded before the load starts
    input_tokens: int  # prompt tokens as the harness counted them (a server's usage wins)


@dataclass
class Chunk:
    t_s: float  # perf_counter when it was read
    token_ids: list[int] | None  # its own token ids, where the server streams them
    text: str
    usage_delta: int | None = None  # growth of usage.completion_tokens at this chunk, where it carried usage


@dataclass
class Outcome:
    """One request as the client saw it (times on perf_counter)."""

    index: int
    scheduled_s: float
    input_tokens: int
    sent_s: float | None = None
    done_s: float | None = None
    chunks: list[Chunk] = field(default_factory=list)
    prompt_tokens: int | None = None  # from the server's usage
    completion_tokens: int | None = None
    finish_reason: str | None = None
    status: int | None = None
    error: str | None = None
    waited_for_slot: bool = False  # max_concurrency requests were in flight at its arrival

    def to_record(self) -> tuple[RequestRecord, str, int]:
        """The request as the harness's metrics read it (latencies from the scheduled
        arrival), the token-counting method, and how many tokens had no chunk of their own
        (stamped at the last chunk; 0 wherever counts are exact)."""
        times, ids, method, surplus = _token_times(self)
        record = RequestRecord(input_tokens=self.prompt_tokens if self.prompt_tokens is not None else self.input_tokens,
                               submitted_s=self.sent_s if self.sent_s is not None else self.scheduled_s,
                               token_times_s=times, arrival_s=self.scheduled_s, token_ids=ids)
        return record, method, surplus


def _token_times(o: Outcome) -> tuple[list[float], list[int], str, int]:
    chunks = o.chunks
    if chunks and all(c.token_ids is not None for c in chunks):
        return ([c.t_s for c in chunks for _ in c.token_ids or ()],
                [t for c in chunks for t in c.token_ids or ()], "token_ids", 0)
    # a running usage on every chunk; a single chunk's usage may as well be a final total
    if len(chunks) >= 2 and all(c.usage_delta is not None for c in chunks):
        return [c.t_s for c in chunks for _ in range(c.usage_delta or 0)], [], "usage_per_chunk", 0
    times = [c.t_s for c in chunks if c.text]
    if o.completion_tokens is None:
        return times, [], "text_events", 0
    total = o.completion_tokens
    surplus = max(0, total - len(times))
    if total < len(times):  # more text events than tokens: keep the first and the last
        times = times[: max(0, total - 1)] + times[-1:] if total else []
    elif surplus:
        last = chunks[-1].t_s if chunks else (o.done_s or o.scheduled_s)
        times += [max(times[-1], last) if times else last] * surplus
    return times, [], "text_events+usage_total", surplus


# -- the wire ---------------------------------------------------------------------------


def request_head(target: Target, body: bytes) -> bytes:
    return (f"POST {target.path} HTTP/1.1\r\nHost: {target.host}:{target.port}\r\n"
            "Content-Type: application/json\r\nAccept: text/event-stream\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode("ascii")


class EventStream:
    """Server-sent events from a byte stream: `feed` bytes, get the `data:` payloads of
    every event completed by them."""

    def __init__(self) -> None:
        self._buf = b""

    def feed(self, data: bytes) -> list[str]:
        # normalised on the whole buffer: a CRLF may arrive split over two reads
        self._buf = (self._buf + data).replace(b"\r\n", b"\n")
        out = []
        while (end := self._buf.find(b"\n\n")) >= 0:
            raw, self._buf = self._buf[:end], self._buf[end + 2:]
            lines = [ln[5:].lstrip() for ln in raw.split(b"\n") if ln.startswith(b"data:")]
            if lines:
                out.append(b"\n".join(lines).decode("utf-8", errors="replace"))
        return out


def apply_event(o: Outcome, payload: str, t: float) -> bool:
    """Fold one event into the outcome; True when the stream says it is finished."""
    if payload.strip() == "[DONE]":
        return True
    obj = json.loads(payload)
    if "error" in obj:
        err = obj["error"]
        o.error = f"server error event: {err.get('message', err) if isinstance(err, dict) else err}"
        return True
    usage = obj.get("usage") or None
    before = o.completion_tokens or 0
    delta = None
    if usage:
        o.prompt_tokens = usage.get("prompt_tokens", o.prompt_tokens)
        if "completion_tokens" in usage:
            o.completion_tokens = usage["completion_tokens"]
            delta = o.completion_tokens - before
    for choice in (obj.get("choices") or [])[:1]:
        text = choice.get("text") or ""
        ids = choice.get("token_ids")
        if ids or text or delta:
            o.chunks.append(Chunk(t, list(ids) if ids is not None else None, text, delta))
        if choice.get("finish_reason"):
            o.finish_reason = choice["finish_reason"]
    return False


async def _read_head(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    status_line = await reader.readline()
    parts = status_line.decode("latin-1").split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/"):
        raise ConnectionError(f"not an HTTP response: {status_line[:80]!r}")
    headers = {}
    while (line := await reader.readline()) not in (b"\r\n", b"\n", b""):
        k, _, v = line.decode("latin-1").partition(":")
        headers[k.strip().lower()] = v.strip()
    return int(parts[1]), headers


async def _body_pieces(reader: asyncio.StreamReader, headers: dict[str, str]):
    """The response body as the server wrote it, piece by piece."""
    if "chunked" in headers.get("transfer-encoding", "").lower():
        while True:
            size = int((await reader.readline()).split(b";")[0].strip() or b"0", 16)
            if size == 0:
                return
            data = await reader.readexactly(size)
            await reader.readexactly(2)  # the CRLF after each chunk
            yield data
    elif "content-length" in headers:
        left = int(headers["content-length"])
        while left > 0:
            data = await reader.read(min(left, READ_SIZE))
            if not data:
                raise ConnectionError(f"response ended {left} bytes early")
            left -= len(data)
            yield data
    else:
        while data := await reader.read(READ_SIZE):
            yield data


async def stream_request(target: Target, planned: PlannedRequest, origin_s: float,
                         slots: asyncio.Semaphore | None, clock: Callable[[], float] = time.perf_counter) -> Outcome:
    """Send one request (after waiting for a slot, if capped) and read its stream to the end."""
    o = Outcome(planned.index, origin_s + planned.arrival_s, planned.input_tokens)
    if slots is not None:
        o.waited_for_slot = slots.locked()
        await slots.acquire()
    writer = None
    try:
        reader, writer = await asyncio.open_connection(target.host, target.port)
        writer.write(request_head(target, planned.body) + planned.body)
        o.sent_s = clock()
        await writer.drain()
        o.status, headers = await _read_head(reader)
        if o.status != 200:
            body = b""
            async for piece in _body_pieces(reader, headers):
                body += piece
                if len(body) > MAX_ERROR_BODY:
                    break
            o.error = f"HTTP {o.status}: {body[:2000].decode('utf-8', errors='replace').strip()}"
            return o
        events, finished = EventStream(), False
        async for piece in _body_pieces(reader, headers):
            t = clock()
            for payload in events.feed(piece):
                finished = apply_event(o, payload, t) or finished
                if o.error:
                    return o
        o.done_s = clock()
        if not o.chunks:
            o.error = "the stream ended without any output"
        elif not finished and o.finish_reason is None:
            o.error = "the stream ended without finishing the completion"
        return o
    except (OSError, ConnectionError, asyncio.IncompleteReadError, ValueError) as e:
        o.error = f"{type(e).__name__}: {e}"
        return o
    finally:
        if writer is not None:
            writer.close()
        if slots is not None:
            slots.release()


async def _load(target: Target, planned: list[PlannedRequest], max_concurrency: int | None,
                timeout_s: float, origin_s: float | None,
                progress: Callable[[], None] | None) -> tuple[float, list[Outcome]]:
    slots = asyncio.Semaphore(max_concurrency) if max_concurrency else None
    origin = time.perf_counter() if origin_s is None else origin_s
    tasks: list[asyncio.Task] = []
    failed = asyncio.Event()

    async def one(p: PlannedRequest) -> Outcome:
        try:
            o = await asyncio.wait_for(stream_request(target, p, origin, slots), timeout_s)
        except asyncio.TimeoutError:
            o = Outcome(p.index, origin + p.arrival_s, p.input_tokens,
                        error=f"no complete answer within serving.request_timeout_s ({timeout_s:g} s)")
        if o.error:
            failed.set()
        if progress is not None:
            progress()
        return o

    try:
        for p in sorted(planned, key=lambda p: p.arrival_s):
            delay = origin + p.arrival_s - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)  # a failure stops the dispatch at the next arrival
            if failed.is_set():
                break
            tasks.append(asyncio.create_task(one(p)))
        waiter = asyncio.ensure_future(failed.wait())
        pending = set(tasks)
        while pending and not failed.is_set():
            _, pending = await asyncio.wait(pending | {waiter}, return_when=asyncio.FIRST_COMPLETED)
            pending.discard(waiter)
        waiter.cancel()
    finally:
        for t in tasks:
            if not t.done():
                t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    outcomes = [t.result() for t in tasks if t.done() and not t.cancelled()]
    bad = [o for o in outcomes if o.error]
    if bad or len(outcomes) < len(planned):
        first = min(bad, key=lambda o: o.index) if bad else None
        what = f"request {first.index}: {first.error}" if first else "the load stopped early"
        raise LoadFailed(f"{len(bad)} of {len(planned)} request(s) failed; first: {what}")
    return origin, sorted(outcomes, key=lambda o: o.index)


def run_load(target: Target, planned: list[PlannedRequest], max_concurrency: int | None, timeout_s: float,
             origin_s: float | None = None, progress: Callable[[], None] | None = None) -> tuple[float, list[Outcome]]:
    """Send every planned request at origin_s + its arrival (default origin: now) and
    return the origin and every outcome in schedule order; LoadFailed if any failed.
    `progress` is called (on this thread) as each request ends: the harness's heartbeat."""
    return asyncio.run(_load(target, planned, max_concurrency, timeout_s, origin_s, progress))


def completion_body(model: str, prompt: str, max_tokens: int, temperature: float, top_p: float,
                    extra: dict[str, Any]) -> bytes:
    """A streamed /v1/completions body: the common fields, then the server's own (spec.request_fields)."""
    body = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "stream": True,
            "temperature": temperature, "top_p": top_p, **extra}
    return json.dumps(body, separators=(",", ":")).encode("utf-8")


# -- plain calls (readiness, cache reset) ------------------------------------------------


def http_call(host: str, port: int, method: str, path: str, timeout_s: float = 5.0) -> tuple[int, str]:
    """(status, body) of one small request; raises OSError when nothing answers."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout_s)
    try:
        conn.request(method, path, headers={"Content-Length": "0"} if method == "POST" else {})
        resp = conn.getresponse()
        return resp.status, resp.read(MAX_ERROR_BODY).decode("utf-8", errors="replace")
    finally:
        conn.close()
