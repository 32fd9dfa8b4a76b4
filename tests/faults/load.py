"""A small closed-loop load generator over real HTTP (asyncio + httpx), recording every
request: when it started and ended, the status, the decision and the error code."""
from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

# Drop idle keep-alive connections well before the server does (uvicorn: 5 s), so a request is
# never written to a connection the server is closing (a client-side race, not a server fault).
KEEPALIVE = 1.0


@dataclass(frozen=True, slots=True)
class Sample:
    started: float  # time.monotonic()
    ended: float
    status: int  # 0 = transport error (no HTTP answer)
    decision: str | None
    code: str | None
    retry_after: str | None
    error: str | None = None
    request_id: str | None = None
    wall: float = 0.0  # time.time() when it started

    @property
    def latency(self) -> float:
        return self.ended - self.started


@dataclass
class Recorder:
    samples: list[Sample] = field(default_factory=list)

    def between(self, t0: float, t1: float = float("inf")) -> list[Sample]:
        """Requests that STARTED in [t0, t1)."""
        return [s for s in self.samples if t0 <= s.started < t1]

    def allows(self, samples: list[Sample] | None = None) -> int:
        return sum(1 for s in (self.samples if samples is None else samples) if s.decision == "allow")


async def one(client: httpx.AsyncClient, method: str, url: str, body: Any, request_id: str | None = None) -> Sample:
    headers = {"X-Request-ID": request_id} if request_id else None
    wall, t0 = time.time(), time.monotonic()
    try:
        r = await client.request(method, url, json=body, headers=headers)
    except httpx.HTTPError as exc:
        return Sample(t0, time.monotonic(), 0, None, None, None, type(exc).__name__, request_id, wall)
    t1 = time.monotonic()
    decision = code = None
    try:
        data = r.json()
        if isinstance(data, dict):
            decision = data.get("decision") if r.status_code == 200 else None
            code = data.get("code")
    except ValueError:
        pass
    return Sample(t0, t1, r.status_code, decision, code, r.headers.get("retry-after"), None, request_id, wall)


async def closed_loop(
    base_url: str,
    headers: dict[str, str],
    url: str,
    body: Callable[[int], Any],
    *,
    concurrency: int,
    stop: asyncio.Event,
    recorder: Recorder,
    method: str = "POST",
    timeout: float = 10.0,
    max_requests: int | None = None,
    pause: float = 0.0,
    tag: str = "lg",
) -> None:
    """``concurrency`` workers send requests back to back until ``stop`` is set (or
    ``max_requests`` were sent in all). ``pause`` seconds between a worker's requests."""
    counter = [0]
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency, keepalive_expiry=KEEPALIVE)
    async with httpx.AsyncClient(base_url=base_url, headers=headers, timeout=timeout, limits=limits) as client:

        async def worker() -> None:
            while not stop.is_set():
                if max_requests is not None and counter[0] >= max_requests:
                    return
                counter[0] += 1
                n = counter[0]
                recorder.samples.append(await one(client, method, url, body(n), f"{tag}-{n}"))
                if pause:
                    await asyncio.sleep(pause)

        await asyncio.gather(*(worker() for _ in range(concurrency)))


async def fixed_rate(
    base_url: str,
    headers: dict[str, str],
    url: str,
    body: Callable[[int], Any],
    *,
    rate: float,
    duration: float,
    recorder: Recorder,
    method: str = "POST",
    timeout: float = 10.0,
    max_in_flight: int = 64,
) -> None:
    """Open loop: ``rate`` requests per second for ``duration`` seconds (bounded in count)."""
    total = int(rate * duration)
    slots = asyncio.Semaphore(max_in_flight)
    limits = httpx.Limits(max_connections=max_in_flight, max_keepalive_connections=max_in_flight, keepalive_expiry=KEEPALIVE)
    async with httpx.AsyncClient(base_url=base_url, headers=headers, timeout=timeout, limits=limits) as client:
        start = time.monotonic()
        tasks = []

        async def fire(i: int) -> None:
            async with slots:
                recorder.samples.append(await one(client, method, url, body(i)))

        for i in range(total):
            delay = start + i / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(fire(i)))
        await asyncio.gather(*tasks)


def pct(values: list[float], p: float) -> float:
    if not values:
        return 0.0
    s = sorted(values)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))]
