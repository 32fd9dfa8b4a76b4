"""``bastion serve`` (one worker) under pyinstrument: ``python -m benchmarks.profiled_server OUT_DIR``.

Runs the same uvicorn configuration as ``bastion.cli serve`` (factory ``bastion.app:asgi``,
loop/http "auto", no access log from uvicorn) in the main thread with a sampling profiler
around it, started by SIGUSR1 (after the warm-up), sampling on the main thread's CPU clock. On SIGINT uvicorn shuts down, the profiler stops and writes:

* ``profile.html``  the interactive pyinstrument report,
* ``profile.txt``   the call tree as text,
* ``profile-top.json``  the top functions by own (self) time and by total time.
"""
from __future__ import annotations

import json
import signal
import sys
import time
from pathlib import Path
from typing import Any


def _walk(frame: Any, acc_self: dict[str, float], acc_total: dict[str, float], stack: tuple[str, ...]) -> None:
    ident = f"{frame.function} ({frame.file_path_short}:{frame.line_no})"
    real = [c for c in frame.children if not c.is_synthetic]
    own = frame.time - sum(c.time for c in real)  # synthetic children ([self], [await]) are own time
    acc_self[ident] = acc_self.get(ident, 0.0) + max(own, 0.0)
    if ident not in stack:  # recursion counts once toward the total
        acc_total[ident] = acc_total.get(ident, 0.0) + frame.time
    for child in real:
        _walk(child, acc_self, acc_total, stack + (ident,))


# Where the server's CPU goes: (label, function name, file suffix) of frames whose total time
# is summed, as shares of everything sampled (the main thread: requests and background tasks).
BUCKETS = (
    ("requests (all of it)", "__call__", "httpkit/context.py"),
    ("route handler", "execute", "gateway/routes.py"),
    ("authentication", "__call__", "gateway/agent_auth.py"),
    ("body read + decode", "_body", "gateway/routes.py"),
    ("decision (incl. Redis)", "_decide", "gateway/service.py"),
    ("Redis quota call", "_run", "store/quotas.py"),
    ("response send", "send_wrapper", "httpkit/context.py"),
    ("access log line", "info", "logging/__init__.py"),
    ("audit writer (background)", "_run", "store/audit_writer.py"),
    ("canonical JSON (rfc8785), anywhere", "dumps", "rfc8785/_impl.py"),
)


def breakdown(acc_total: dict[str, float], whole: float) -> dict[str, float]:
    sums: dict[str, float] = {}
    for label, fn, suffix in BUCKETS:
        sums[label] = sum(t for ident, t in acc_total.items()
                          if ident.startswith(f"{fn} (") and f"{suffix}:" in ident)
    return {k: round(v / whole, 3) for k, v in sums.items()} if whole else {}


def top_functions(session: Any, n: int = 15) -> dict[str, Any]:
    root = session.root_frame()
    if root is None:
        return {"duration_s": 0.0, "samples": 0, "by_self": [], "by_total": []}
    acc_self: dict[str, float] = {}
    acc_total: dict[str, float] = {}
    _walk(root, acc_self, acc_total, ())
    total = root.time or 1.0

    def rows(acc: dict[str, float], project_only: bool = False) -> list[dict[str, Any]]:
        items = sorted(acc.items(), key=lambda kv: kv[1], reverse=True)
        out = []
        for ident, t in items:
            if project_only and not any(f"{pkg}/" in ident for pkg in ("gateway", "httpkit", "store", "policies", "core", "api", "bastion")):
                continue
            if project_only and "site-packages" in ident:
                continue
            out.append({"function": ident, "seconds": round(t, 4), "share": round(t / total, 4)})
            if len(out) >= n:
                break
        return out

    return {
        "breakdown": breakdown(acc_total, total),
        "duration_s": round(session.duration, 3),
        "samples": session.sample_count,
        "by_self": rows(acc_self),
        "by_total_project": rows(acc_total, project_only=True),
    }


def main(argv: list[str]) -> int:
    out_dir = Path(argv[1])
    out_dir.mkdir(parents=True, exist_ok=True)
    import uvicorn
    from pyinstrument import Profiler

    from core.settings import load_settings

    settings = load_settings()
    profiler = Profiler(interval=0.0005, async_mode="disabled")
    cpu_clock = [False]

    def start(_signum: int, _frame: Any) -> None:
        if not profiler.is_running:
            # Sample on the thread's CPU clock, not the wall clock: time the event loop spends
            # waiting (for Redis, or for a CPU another process holds) would otherwise be charged
            # to whichever coroutine resumes next. pyinstrument's sampler takes a timer function
            # (its tests use it for fake clocks).
            try:
                from pyinstrument.stack_sampler import get_stack_sampler

                get_stack_sampler().timer_func = time.thread_time
                cpu_clock[0] = True
            except Exception:  # pragma: no cover - a pyinstrument without the hook: wall clock
                cpu_clock[0] = False
            profiler.start()

    # Start-up and warm-up are not profiled: the harness sends SIGUSR1 when the load begins.
    signal.signal(signal.SIGUSR1, start)
    try:
        uvicorn.run(
            "bastion.app:asgi",
            factory=True,
            host=settings.host,
            port=settings.port,
            workers=1,
            log_level="warning",
            access_log=False,
            loop="auto",
            http="auto",
            lifespan="on",
        )
    finally:
        if not profiler.is_running:
            (out_dir / "profile-top.json").write_text(json.dumps({"error": "never started (no SIGUSR1)"}))
            # On purpose: without a profile the run's outcome is this exit status and the note
            # above, whatever ended the server.
            return 1  # noqa: B012
        session = profiler.stop()
        (out_dir / "profile.html").write_text(profiler.output_html())
        (out_dir / "profile.txt").write_text(profiler.output_text(unicode=False, color=False, show_all=False))
        top = top_functions(session)
        top["clock"] = "thread CPU time" if cpu_clock[0] else "wall time"
        (out_dir / "profile-top.json").write_text(json.dumps(top, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
