"""Can this machine reach a host? Asked once, up front, in about two seconds, before a library (tfds, keras-hub)
would retry for minutes, so that an offline machine gets one whole line instead."""

from __future__ import annotations

import os
import socket

from kerasllm.core.errors import UserError

TIMEOUT_SECONDS = 2.0
TFDS_HOST = "storage.googleapis.com"  # tfds' own mirror of prepared datasets, and where many of its sources live

_reachable: dict[str, bool] = {}


def reachable(host: str, port: int = 443, timeout: float = TIMEOUT_SECONDS) -> bool:
    """Whether a TCP connection to `host:port` opens within `timeout` (remembered for the process); never, with
    `KERASLLM_OFFLINE=1` (as Hugging Face's `HF_HUB_OFFLINE`: work from local files only, and say so at once)."""
    if os.environ.get("KERASLLM_OFFLINE", "").lower() in ("1", "true", "yes"):
        return False
    if host not in _reachable:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                _reachable[host] = True
        except OSError:
            _reachable[host] = False
    return _reachable[host]


def require(host: str, what: str, fix: str) -> None:
    """A one-line `UserError` when `host` cannot be reached: "cannot reach HOST to WHAT (no network?); FIX"."""
    if not reachable(host):
        raise UserError(f"cannot reach {host} to {what} (no network?); {fix}")
