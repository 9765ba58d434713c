"""Run an ASGI app on a real uvicorn server in a background thread, for tests.

    with serve(app) as base_url:          # e.g. "http://127.0.0.1:54321"
        httpx.get(base_url + "/health")

Uvicorn binds port 0, so the OS picks a free port per server: several can run at once in
one process. The app's lifespan runs ("on"), and `serve` waits until uvicorn has started.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Any

import uvicorn

START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 10.0
# In-flight requests (a stalled upstream) are cancelled this long after shutdown begins.
GRACEFUL_SHUTDOWN_S = 2.0


@contextlib.contextmanager
def serve(
    app: Any,
    *,
    host: str = "127.0.0.1",
    start_timeout: float = START_TIMEOUT_S,
    stop_timeout: float = STOP_TIMEOUT_S,
) -> Iterator[str]:
    """Serve `app` (any ASGI callable) and yield its base URL; stop the server on exit.

    Raises RuntimeError when the server has not started within `start_timeout` seconds
    (the lifespan may load a model) or stopped before starting (a lifespan startup error).
    Uvicorn handles no signals outside the main thread, so Ctrl+C still reaches pytest.
    """
    config = uvicorn.Config(
        app,
        host=host,
        port=0,
        log_level="warning",
        lifespan="on",
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
    )
    server = uvicorn.Server(config)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            server.run()
        except BaseException as e:  # reported by the waiting thread
            errors.append(e)

    thread = threading.Thread(target=run, name="uvicorn-test-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + start_timeout
    while not server.started:
        if not thread.is_alive():
            why = f": {errors[0]!r}" if errors else " (its log shows why, e.g. a lifespan error)"
            raise RuntimeError(f"uvicorn on {host} stopped before starting{why}")
        if time.monotonic() > deadline:
            server.should_exit = True
            thread.join(stop_timeout)
            raise RuntimeError(f"uvicorn on {host} did not start within {start_timeout} s")
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(stop_timeout)
        if thread.is_alive():
            server.force_exit = True
            thread.join(stop_timeout)
