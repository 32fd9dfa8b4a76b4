"""A closed-loop HTTP/1.1 keep-alive load generator on raw asyncio streams.

Run as its own process (``python -m benchmarks.loadgen SPEC.json OUT.json``) so its CPU is
never the server's: it pins itself to the CPUs named in the spec with ``os.sched_setaffinity``
before doing anything else. httpx/aiohttp spend more CPU per request than the server under
test; this spends a few microseconds: the requests are pre-encoded bytes, and a response is
read as a status line, headers up to the blank line and exactly Content-Length body bytes.

Spec (JSON)::

    {"host": "127.0.0.1", "port": 8000, "connections": 16,
     "warmup_s": 1.0, "duration_s": 5.0,          # time-bounded ...
     "max_requests": null,                        # ... or count-bounded (measured requests)
     "cpus": [1], "timeout_s": 5.0,
     "requests": [{"name": "allow", "method": "POST", "path": "/x",
                   "headers": {"x-api-key": "..."}, "body": "{...}",
                   "expect_status": [200], "weight": 8}, ...]}

Each connection walks its own shuffled copy of the weighted request list (so the mix holds at
any concurrency). Output: requests, errors (transport failures, timeouts, 5xx and statuses not
in ``expect_status``), requests/s over the measured window, latency percentiles in ms, and per
request class the counts of statuses and of ``"decision":"..."`` values seen in the bodies.
"""
from __future__ import annotations

import asyncio
import json
import os
import random
import sys
import time
from array import array
from typing import Any

DECISIONS = (b'"decision":"allow"', b'"decision":"deny"', b'"decision":"escalate"')


def build_request(host: str, port: int, req: dict[str, Any]) -> bytes:
    body = req.get("body") or ""
    body_b = body.encode() if isinstance(body, str) else bytes(body)
    lines = [f"{req.get('method', 'POST')} {req['path']} HTTP/1.1", f"Host: {host}:{port}"]
    headers = {k.lower(): v for k, v in (req.get("headers") or {}).items()}
    if body_b or req.get("method", "POST") in ("POST", "PUT", "PATCH"):
        headers.setdefault("content-type", "application/json")
        headers["content-length"] = str(len(body_b))
    for k, v in headers.items():
        lines.append(f"{k}: {v}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body_b


def percentile(sorted_values: list[float] | array[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of an already sorted sequence."""
    n = len(sorted_values)
    if n == 0:
        return 0.0
    rank = max(1, min(n, int(-(-q * n // 100))))  # ceil(q/100 * n)
    return float(sorted_values[rank - 1])


class Stats:
    def __init__(self, names: list[str]):
        self.latencies = array("d")
        self.errors = 0
        self.error_kinds: dict[str, int] = {}
        self.per_class: dict[str, dict[str, Any]] = {
            n: {"requests": 0, "errors": 0, "unexpected_decisions": 0, "status": {}, "decisions": {}} for n in names
        }
        self.recording = False
        self.responses = 0  # every response, warm-up included (server CPU per request)

    def error(self, kind: str) -> None:
        if self.recording:
            self.errors += 1
            self.error_kinds[kind] = self.error_kinds.get(kind, 0) + 1


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    # "HTTP/1.1 200 OK\r\n..."
    status = int(head[9:12])
    length = 0
    lower = head.lower()
    i = lower.find(b"\r\ncontent-length:")
    if i >= 0:
        j = lower.find(b"\r\n", i + 2)
        length = int(lower[i + 17 : j].strip())
    elif b"transfer-encoding: chunked" in lower:
        body = bytearray()
        while True:
            size_line = await reader.readuntil(b"\r\n")
            size = int(size_line.strip().split(b";")[0], 16)
            chunk = await reader.readexactly(size + 2)
            if size == 0:
                break
            body += chunk[:-2]
        return status, bytes(body)
    body = await reader.readexactly(length) if length else b""
    return status, body


async def _connection(
    spec: dict[str, Any],
    plan: list[tuple[str, bytes, frozenset[int], bytes | None]],
    stats: Stats,
    stop_at: list[float],
    budget: list[int],
    seed: int,
) -> None:
    host, port = spec["host"], int(spec["port"])
    timeout = float(spec.get("timeout_s", 5.0))
    order = list(range(len(plan)))
    random.Random(seed).shuffle(order)
    i = 0
    reader = writer = None
    perf = time.perf_counter
    lat = stats.latencies
    while perf() < stop_at[0]:
        if stats.recording and budget[0] is not None:
            if budget[0] <= 0:
                break
            budget[0] -= 1
        name, raw, expect, expect_decision = plan[order[i % len(order)]]
        i += 1
        try:
            if writer is None:
                reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
            t0 = perf()
            writer.write(raw)
            async with asyncio.timeout(timeout):
                status, body = await _read_response(reader)  # type: ignore[arg-type]
            t1 = perf()
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as exc:
            stats.error(type(exc).__name__)
            if stats.recording:
                stats.per_class[name]["errors"] += 1
            if writer is not None:
                writer.close()
            reader = writer = None
            await asyncio.sleep(0.01)
            continue
        except TimeoutError:
            stats.error("timeout")
            if stats.recording:
                stats.per_class[name]["errors"] += 1
            if writer is not None:
                writer.close()
            reader = writer = None
            continue
        stats.responses += 1
        if not stats.recording:
            continue
        lat.append((t1 - t0) * 1000.0)
        cls = stats.per_class[name]
        cls["requests"] += 1
        st = cls["status"]
        st[status] = st.get(status, 0) + 1
        for marker in DECISIONS:
            if marker in body:
                d = marker[12:-1].decode()
                cls["decisions"][d] = cls["decisions"].get(d, 0) + 1
                break
        if expect_decision is not None and expect_decision not in body:
            cls["unexpected_decisions"] += 1
        if status >= 500 or (expect and status not in expect):
            stats.error(f"status_{status}")
            cls["errors"] += 1
    if writer is not None:
        writer.close()


async def run(spec: dict[str, Any]) -> dict[str, Any]:
    host, port = spec["host"], int(spec["port"])
    plan: list[tuple[str, bytes, frozenset[int], bytes | None]] = []
    for req in spec["requests"]:
        raw = build_request(host, port, req)
        ed = req.get("expect_decision")
        marker = f'"decision":"{ed}"'.encode() if ed else None
        for _ in range(int(req.get("weight", 1))):
            plan.append((req["name"], raw, frozenset(req.get("expect_status") or ()), marker))
    stats = Stats([r["name"] for r in spec["requests"]])
    conns = int(spec["connections"])
    warmup = float(spec.get("warmup_s", 0.0))
    duration = spec.get("duration_s")
    max_requests = spec.get("max_requests")
    hard_limit = float(spec.get("hard_limit_s", 120.0))
    start = time.perf_counter()
    stop_at = [start + hard_limit]
    budget: list[Any] = [int(max_requests) if max_requests else None]
    tasks = [asyncio.create_task(_connection(spec, plan, stats, stop_at, budget, seed=k)) for k in range(conns)]
    await asyncio.sleep(warmup)
    stats.recording = True
    t0 = time.perf_counter()
    cpu0 = time.process_time()
    if duration is not None:
        stop_at[0] = t0 + float(duration)
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    lat = sorted(stats.latencies)
    n = len(lat)
    per_class = {
        name: {**c, "status": {str(k): v for k, v in c["status"].items()}} for name, c in stats.per_class.items()
    }
    return {
        "connections": conns,
        "duration_s": round(elapsed, 3),
        "requests": n,
        "responses_total": stats.responses,
        "errors": stats.errors,
        "unexpected_decisions": sum(c["unexpected_decisions"] for c in stats.per_class.values()),
        "error_kinds": stats.error_kinds,
        "rps": round(n / elapsed, 1) if elapsed > 0 else 0.0,
        "latency_ms": {
            "p50": round(percentile(lat, 50), 3),
            "p90": round(percentile(lat, 90), 3),
            "p99": round(percentile(lat, 99), 3),
            "max": round(lat[-1], 3) if n else 0.0,
            "mean": round(sum(lat) / n, 3) if n else 0.0,
        },
        "loadgen_cpu_s": round(cpu, 3),
        "loadgen_cpu_share": round(cpu / elapsed, 3) if elapsed > 0 else 0.0,
        "per_class": per_class,
    }


def main(argv: list[str]) -> int:
    spec_path, out_path = argv[1], argv[2]
    with open(spec_path) as f:
        spec = json.load(f)
    cpus = spec.get("cpus")
    if cpus:
        os.sched_setaffinity(0, set(int(c) for c in cpus))
    try:
        import uvloop

        result = uvloop.run(run(spec))
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        result = asyncio.run(run(spec))
    result["cpus"] = sorted(os.sched_getaffinity(0))
    with open(out_path, "w") as f:
        json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
