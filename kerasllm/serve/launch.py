"""The server's lifecycle for `kerasllm serve`: the listening socket (claimed before any model loads, so a port in use
is one line in a second), then uvicorn over the app until Ctrl-C or SIGTERM, then the engines stopped.

On either signal uvicorn stops taking connections and lets the open requests finish, for at most `--drain-seconds`;
then the ones still open are ended by the engines (each answer ends as usual, with its finish reason, rather than cut
with a traceback in the log, as uvicorn's own `timeout_graceful_shutdown` cancels them), and the command says how it
stopped and exits 0. uvicorn raises the signal again once it is done, which for SIGTERM ended the process with status
143 and no word: here it becomes `Stopped` instead."""

from __future__ import annotations

import signal
import socket
import threading

from kerasllm.core.errors import UserError

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


class Stopped(Exception):
    """SIGTERM reached the process once uvicorn had shut down (it raises the signal it caught again)."""


def check_options(port: int, stream_interval_ms: float, max_body_mb: float = 4, read_timeout: float = 30,
                  drain_seconds: float = 30) -> None:
    if not 1 <= port <= 65535:
        raise UserError(f"--port must be between 1 and 65535, not {port}")
    if not 0 <= stream_interval_ms <= 1000:
        raise UserError(f"--stream-interval must be between 0 and 1000 milliseconds, not {stream_interval_ms:g}")
    for name, value in (("--max-body", max_body_mb), ("--read-timeout", read_timeout)):
        if not value > 0:
            raise UserError(f"{name} must be more than 0, not {value:g}")
    if not drain_seconds >= 0:
        raise UserError(f"--drain-seconds must be 0 or more, not {drain_seconds:g}")


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


def serve(listener: socket.socket, served: list, api_key: str | None, stream_interval_ms: float, debug: bool = False, *,
          max_body_mb: float = 4, read_timeout: float = 30, drain_seconds: float = 30) -> str:
    """Answer on `listener` until Ctrl-C or SIGTERM (uvicorn's own handling: no new connections, the open requests
    given `drain_seconds` to finish), then stop every model's engine; returns the signal's name ("" when uvicorn
    stopped for another reason)."""
    import uvicorn

    from kerasllm.serve import app

    def stopped(signum, frame):
        raise Stopped

    application = app.create_app(served, api_key, stream_interval_ms / 1000, max_body=int(max_body_mb * (1 << 20)),
                                 read_timeout=read_timeout)
    def end_open_requests():
        for one in served:
            one.engine.cancel_all()

    deadline = threading.Timer(drain_seconds, end_open_requests)
    deadline.daemon = True  # a drain that ended early leaves nothing to wait for at exit

    class Draining(uvicorn.Server):
        def handle_exit(self, sig, frame):  # the first signal: the open requests get `drain_seconds`, then are ended
            if not self.should_exit:
                deadline.start()
            super().handle_exit(sig, frame)

    # uvicorn's own deadline, a few seconds after the engines ended what was open, cancels only what is left then
    config = uvicorn.Config(application, log_level="info" if debug else "warning", timeout_graceful_shutdown=drain_seconds + 5)
    previous = signal.signal(signal.SIGTERM, stopped)  # what uvicorn raises again after its shutdown
    how = ""
    try:
        Draining(config).run(sockets=[listener])
    except KeyboardInterrupt:  # uvicorn shuts down on Ctrl-C / SIGINT, then raises it again
        how = "Ctrl-C"
    except Stopped:
        how = "SIGTERM"
    finally:
        deadline.cancel()
        signal.signal(signal.SIGTERM, previous)
        for one in served:
            one.engine.stop()
    return how
