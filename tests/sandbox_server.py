"""Run any ASGI app on a free loopback port in a thread, for tests that talk real HTTP over sockets.

    with run_asgi(create_app(...)) as base_url:
        httpx.get(f"{base_url}/_sandbox/stats")

The server is uvicorn (h11, no websockets, no lifespan); the port is bound before the thread starts,
so ``base_url`` is usable as soon as the context manager yields.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn


@contextmanager
def run_asgi(
    app: Any, *, host: str = "127.0.0.1", startup_timeout: float = 10.0, date_header: bool | None = None
) -> Iterator[str]:
    """Serve ``app`` on ``host`` at a free port; yield ``http://host:port``; stop the server on exit.

    ``date_header``: let uvicorn add ``Date``; by default it does unless the app says it sends its own
    (``app.state.sends_date_header``, as the platform sandboxes do, whose clock can be told to drift).
    """
    if date_header is None:
        state = getattr(app, "state", None)
        date_header = not getattr(state, "sends_date_header", False)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # accepted sockets inherit it
    sock.bind((host, 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        app,
        http="h11",
        ws="none",
        lifespan="off",
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=1,
        date_header=date_header,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True, name=f"asgi-{port}")
    thread.start()
    deadline = time.monotonic() + startup_timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            sock.close()
            raise RuntimeError(f"ASGI test server on {host}:{port} did not start")
        time.sleep(0.01)
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
