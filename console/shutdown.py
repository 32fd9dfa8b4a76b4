"""Whether the server is shutting down, for the console's long-lived streams.

uvicorn's graceful shutdown waits for every in-flight response to finish, and tells the
application nothing: an open inbox tab (a server-sent event stream) would hold a restart for
as long as the stream lasts. uvicorn installs its ``Server.handle_exit`` as the SIGTERM/SIGINT
handler and sets ``should_exit`` on that server when the signal comes; the streams read that
flag and end, and the browser reconnects to the next process. Read-only and defensive: under
another server (or none) this says False and the streams end by their own time limit.
"""
from __future__ import annotations

import signal


def stopping() -> bool:
    for sig in (signal.SIGTERM, signal.SIGINT):
        owner = getattr(signal.getsignal(sig), "__self__", None)
        if getattr(owner, "should_exit", False) is True:
            return True
    return False
