"""The server's lifecycle for `kerasllm serve`: the listening socket (claimed before any model loads, so a port in use
is one line in a second), then uvicorn over the app until Ctrl-C or SIGTERM, then the engines stopped."""

from __future__ import annotations

import socket

from kerasllm.core.errors import UserError

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


def check_options(port: int, stream_interval_ms: float) -> None:
    if not 1 <= port <= 65535:
        raise UserError(f"--port must be between 1 and 65535, not {port}")
    if not 0 <= stream_interval_ms <= 1000:
        raise UserError(f"--stream-interval must be between 0 and 1000 milliseconds, not {stream_interval_ms:g}")


def listen(host: str, port: int) -> socket.socket:
    """A socket bound to host:port, or one line naming why it cannot be."""
    listener = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    try:
        listener.bind((host, port))
    except OSError as error:
        listener.close()
        raise UserError(f"cannot listen on {host}:{port} ({error.strerror}); pass another --port or --host") from None
    return listener


def address(host: str, port: int) -> str:
    """The base URL a client uses."""
    shown = "localhost" if host in ("127.0.0.1", "::1") else host
    return f"http://{shown}:{port}/v1"


def serve(listener: socket.socket, served: list, api_key: str | None, stream_interval_ms: float, debug: bool = False) -> None:
    """Answer on `listener` until Ctrl-C or SIGTERM (uvicorn's own handling), then stop every model's engine."""
    import uvicorn

    from kerasllm.serve import app

    config = uvicorn.Config(app.create_app(served, api_key, stream_interval_ms / 1000), log_level="info" if debug else "warning")
    try:
        uvicorn.Server(config).run(sockets=[listener])
    except KeyboardInterrupt:  # uvicorn shuts down on Ctrl-C / SIGINT, then raises it again
        pass
    finally:
        for one in served:
            one.engine.stop()
