"""kerasllm/core/network.py: the up-front reachability check, on loopback only."""

import socket

import pytest

from kerasllm.core import network
from kerasllm.core.errors import UserError
from tests.conftest import assert_says


def test_reachable_on_loopback_and_remembered(monkeypatch):
    monkeypatch.setattr(network, "_reachable", {})
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        port = server.getsockname()[1]
        assert network.reachable("127.0.0.1", port=port, timeout=1)
    monkeypatch.setattr(network, "_reachable", {})
    with socket.socket() as closed:  # a port nobody listens on: refused at once
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    assert not network.reachable("127.0.0.1", port=port, timeout=1)
    assert network._reachable == {"127.0.0.1": False}  # asked once per process


def test_require_is_one_line(monkeypatch):
    monkeypatch.setattr(network, "_reachable", {"example.invalid": False})
    with pytest.raises(UserError) as error:
        network.require("example.invalid", "fetch a thing", "pass a local copy")
    assert_says(str(error.value), "cannot reach example.invalid", "fetch a thing", "pass a local copy")
