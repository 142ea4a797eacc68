"""Cost of the serving scenario's load generator (backends/serving/client.py): its own CPU time
per request, and the highest request rate it sustains, against a stub server that answers
at once (tests/support/stub_openai.py in a process of its own, over loopback), so that
nothing but the client and the loopback path is measured.

- CPU per request: this process's CPU time (user + system) over a load of --n requests
  sent all at once (at most --concurrency in flight), divided by the requests.
- Sustained rate: offered rates doubling from --start-rate; each runs for at most
  --seconds (and --max-requests). A rate is sustained when the client sent every request
  within --lag-ms of its schedule at p99 (requests that waited for a free slot excluded)
  and requests completed at >= 90% of the offered rate. The stub's own CPU use is printed
  beside each rate: a stub near one full core is the limit, not the client.

    python benchmarks/serving_client_cost.py [--n 2000] [--tokens 16] [--concurrency 64]
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil

from llenergymeasure.backends.serving.client import PlannedRequest, Target, completion_body, http_call, run_load

STUB = Path(__file__).resolve().parents[1] / "tests" / "support" / "stub_openai.py"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_stub() -> tuple[subprocess.Popen, int]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(STUB), "--port", str(port)], stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while True:
        try:
            if http_call("127.0.0.1", port, "GET", "/v1/models")[0] == 200:
                return proc, port
        except OSError:
            if time.monotonic() > deadline:
                proc.kill()
                raise SystemExit("the stub server did not start")
            time.sleep(0.05)


def planned(n: int, rate: float | None, tokens: int) -> list[PlannedRequest]:
    body = completion_body("stub", "hello world", tokens, 0.0, 1.0, {})
    return [PlannedRequest(i, 0.0 if rate is None else i / rate, body, 2) for i in range(n)]


def cpu_s() -> float:
    t = psutil.Process().cpu_times()
    return t.user + t.system


def cpu_per_request(port: int, n: int, tokens: int, concurrency: int) -> float:
    target = Target("127.0.0.1", port)
    run_load(target, planned(min(n, 50), None, tokens), concurrency, 60)  # warm the loop and the stub
    before = cpu_s()
    _, outcomes = run_load(target, planned(n, None, tokens), concurrency, 300)
    assert all(len(o.to_record()[0].token_times_s) == tokens for o in outcomes)
    return (cpu_s() - before) / n


def try_rate(port: int, stub: psutil.Process, rate: float, tokens: int, seconds: float, max_requests: int,
             lag_ms: float, concurrency: int) -> tuple[bool, str]:
    n = max(20, min(max_requests, int(rate * seconds)))
    stub_before = sum(stub.cpu_times()[:2])
    t0 = time.perf_counter()
    _, outcomes = run_load(Target("127.0.0.1", port), planned(n, rate, tokens), concurrency, 300)
    wall = time.perf_counter() - t0
    stub_cores = (sum(stub.cpu_times()[:2]) - stub_before) / wall
    lags = sorted((o.sent_s - o.scheduled_s) * 1000 for o in outcomes if not o.waited_for_slot)
    p50 = lags[len(lags) // 2] if lags else float("nan")
    p99 = lags[min(len(lags) - 1, int(0.99 * len(lags)))] if lags else float("nan")
    done = sorted(o.done_s for o in outcomes)
    achieved = (n - 1) / (done[-1] - done[0]) if done[-1] > done[0] else float("inf")
    ok = p99 <= lag_ms and achieved >= 0.9 * rate
    return ok, (f"{rate:8.0f} req/s offered: {n:5d} requests, achieved {achieved:8.0f} req/s, send lag p50/p99 "
                f"{p50:6.2f}/{p99:6.2f} ms, slot waits {sum(o.waited_for_slot for o in outcomes):4d}, stub {stub_cores:.2f} "
                f"cores -> {'sustained' if ok else 'NOT sustained'}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2000, help="requests for the CPU-per-request figure")
    ap.add_argument("--tokens", type=int, default=16, help="streamed tokens per request")
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--start-rate", type=float, default=50.0)
    ap.add_argument("--max-rate", type=float, default=12800.0)
    ap.add_argument("--seconds", type=float, default=3.0, help="length of each rate's load")
    ap.add_argument("--max-requests", type=int, default=6000)
    ap.add_argument("--lag-ms", type=float, default=10.0)
    a = ap.parse_args()
    proc, port = start_stub()
    print(f"host: {psutil.cpu_count()} CPUs, load average {psutil.getloadavg()[0]:.1f} (1 min)")
    try:
        per = cpu_per_request(port, a.n, a.tokens, a.concurrency)
        print(f"client CPU per request ({a.tokens} streamed tokens, {a.n} requests): {per * 1000:.3f} ms "
              f"(at most {1 / per:.0f} requests/s per core of client CPU)")
        best, rate = None, a.start_rate
        while rate <= a.max_rate:
            ok, line = try_rate(port, psutil.Process(proc.pid), rate, a.tokens, a.seconds, a.max_requests, a.lag_ms,
                                a.concurrency)
            print(line)
            if not ok:
                break
            best, rate = rate, rate * 2
        print(f"highest sustained rate: {best:.0f} requests/s" if best else "highest sustained rate: below the start rate")
    finally:
        proc.kill()
        proc.wait()


if __name__ == "__main__":
    main()
