"""`kerasllm chat` in a real terminal (pexpect) and `kerasllm serve` as a command, called with curl (slow tier: they
start processes)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest

from tests.conftest import need

pytestmark = pytest.mark.slow
KERASLLM = [sys.executable, "-m", "kerasllm"]


def test_chat_repl_streams_keeps_the_session_through_ctrl_c_and_leaves_on_ctrl_d(chat_run, tmp_path):
    pexpect = need("pexpect")
    saved = tmp_path / "conversation.jsonl"
    child = pexpect.spawn(KERASLLM[0], [*KERASLLM[1:], "chat", str(chat_run), "--temperature", "0", "--length", "12"],
                          encoding="utf-8", timeout=120, dimensions=(40, 200), env={**os.environ, "TERM": "dumb"})
    try:
        child.expect("chatting with chat")
        child.expect("you> ")
        child.sendline("/system You answer in one short line.")
        child.expect("system message set: You answer in one short line.")
        child.expect("you> ")
        child.sendline("Say hello to Ada.")
        child.expect("bot> ")
        child.sendintr()  # the first reply compiles the decoder for seconds: Ctrl-C usually lands inside the answer
        # on a loaded machine the signal was seen only after the 12 tokens had streamed (the clean-clone CI of
        # 2026-12-02): the reply then ends as usual; either way the session goes on
        child.expect([r"\[stopped\]", "you> "])
        if child.after != "you> ":
            child.expect("you> ")
        child.sendline("Reverse: keras")
        child.expect("bot> ")
        child.expect("you> ")
        child.sendline(f"/save {saved}")
        child.expect("saved to")
        child.expect("you> ")
        child.sendline("/help")
        child.expect("/reset forgets the conversation")
        child.expect("you> ")
        child.sendeof()  # Ctrl-D
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 0, child.before
    conversation = json.loads(saved.read_text(encoding="utf-8").splitlines()[0])["messages"]
    assert [m["role"] for m in conversation] == ["system", "user", "assistant", "user", "assistant"]
    assert conversation[0]["content"] == "You answer in one short line." and conversation[3]["content"] == "Reverse: keras"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_serve_command_answers_curl_and_stops_cleanly(chat_run):
    curl = shutil.which("curl")
    if curl is None:
        pytest.skip("curl is not installed")
    port = free_port()
    server = subprocess.Popen([*KERASLLM, "serve", str(chat_run), "--port", str(port), "--api-key", "key", "--max-batch", "4"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = server.stdout.readline()
        assert f"serving chat at http://localhost:{port}/v1" in line, line + server.stderr.read()
        base = f"http://127.0.0.1:{port}"
        deadline = time.time() + 30
        while time.time() < deadline and subprocess.run([curl, "-sf", f"{base}/health"], capture_output=True).returncode:
            time.sleep(0.2)
        body = json.dumps({"model": "chat", "messages": [{"role": "user", "content": "Say hello to Ada."}], "max_tokens": 8,
                           "temperature": 0})
        auth = ["-H", "Authorization: Bearer key", "-H", "Content-Type: application/json"]
        answer = json.loads(subprocess.run([curl, "-s", f"{base}/v1/chat/completions", *auth, "-d", body],
                                           capture_output=True, text=True, check=True).stdout)
        assert answer["object"] == "chat.completion" and answer["choices"][0]["message"]["role"] == "assistant"
        streamed = subprocess.run([curl, "-sN", f"{base}/v1/chat/completions", *auth, "-d", body[:-1] + ', "stream": true}'],
                                  capture_output=True, text=True, check=True).stdout
        events = [line.removeprefix("data: ") for line in streamed.splitlines() if line.startswith("data: ")]
        assert events[-1] == "[DONE]"
        text = "".join(json.loads(event)["choices"][0]["delta"].get("content") or "" for event in events[:-1])
        assert text == answer["choices"][0]["message"]["content"]
        refused = subprocess.run([curl, "-s", "-o", "/dev/null", "-w", "%{http_code}", f"{base}/v1/models"], capture_output=True,
                                 text=True)
        assert refused.stdout == "401"
    finally:
        server.send_signal(signal.SIGINT)
        out, err = server.communicate(timeout=30)
    assert server.returncode == 0, err
    assert "Traceback" not in err and "absl" not in err and "I0000" not in err and "WARNING" not in err, err


def test_sigterm_drains_open_requests_then_ends_them_and_exits_0_with_one_line(lm_run):
    """#32: SIGTERM let the open streams finish but exited by the signal (status 143) without a word. Now: no new
    requests, the open ones get --drain-seconds, then end as usual (a finish reason and [DONE]), one line, status 0."""
    httpx = need("httpx")
    port = free_port()
    server = subprocess.Popen([*KERASLLM, "serve", str(lm_run), "--port", str(port), "--max-tokens", "100000",
                               "--drain-seconds", "1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    chunks = []
    try:
        assert "serving plain" in server.stdout.readline()
        base = f"http://127.0.0.1:{port}"
        deadline = time.time() + 30
        while time.time() < deadline:
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{base}/health").status_code == 200:
                    break
            time.sleep(0.2)
        body = {"prompt": "The", "max_tokens": 100000, "stream": True}
        with httpx.stream("POST", f"{base}/v1/completions", json=body, timeout=60) as stream:
            for line in stream.iter_lines():
                chunks.append(line)
                if len(chunks) == 10:  # streaming: now the signal
                    server.send_signal(signal.SIGTERM)
        stopped = time.monotonic()
        out, err = server.communicate(timeout=60)
        assert time.monotonic() - stopped < 15  # nothing left waiting at exit (a drain timer once held it 30 s)
    finally:
        if server.poll() is None:
            server.kill()
    events = [line.removeprefix("data: ") for line in chunks if line.startswith("data: ")]
    assert events[-1] == "[DONE]" and json.loads(events[-2])["choices"][0]["finish_reason"] == "stop"  # ended, not cut
    assert server.returncode == 0, err
    assert out.strip().splitlines() == ["server stopped (SIGTERM: no new requests; the open ones had up to 1 s to finish)"]
    assert "Traceback" not in err and "ERROR" not in err, err
