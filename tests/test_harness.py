"""The suite's shared harnesses do what the tests rely on: the fake clock and the loopback JSON server."""

from __future__ import annotations

import threading

import httpx
from clock import FakeClock
from loopback import MAX_HOLD, JSONServer, Request, json_answer


def test_fake_clock_moves_only_when_told() -> None:
    clock = FakeClock()
    assert clock() == clock() == 1000.0
    clock.advance(2.5)
    assert clock() == 1002.5
    clock.now = 10.0  # tests may also set it, even backwards
    assert FakeClock(5.0)() == 5.0 and clock() == 10.0


def test_json_server_serves_the_document_and_counts(http: httpx.Client) -> None:
    with JSONServer({"keys": []}, headers={"Cache-Control": "max-age=60"}) as server:
        assert server.url.startswith("http://127.0.0.1:")
        answer = http.get(server.url + "/keys.json", headers={"X-Probe": "1"})
        assert answer.status_code == 200 and answer.json() == {"keys": []}
        assert answer.headers["content-type"] == "application/json"
        assert answer.headers["cache-control"] == "max-age=60"
        server.document, server.status = {"error": "down"}, 503
        assert http.get(server.url + "/again").status_code == 503
        assert server.hits == 2 and server.paths == ["/keys.json", "/again"]
        assert server.requests[0].method == "GET" and server.requests[0].headers["X-Probe"] == "1"


def test_json_server_respond_overrides_the_document(http: httpx.Client) -> None:
    def respond(request: Request) -> tuple[int, dict[str, str], bytes]:
        if request.path == "/raw":
            return 302, {"Location": "https://elsewhere.example/"}, b""
        return json_answer({"path": request.path}, 201)

    with JSONServer(respond=respond) as server:
        assert http.get(server.url + "/x").json() == {"path": "/x"}
        moved = http.get(server.url + "/raw")
        assert moved.status_code == 302 and moved.headers["location"] == "https://elsewhere.example/"


def test_json_server_gate_holds_answers_until_released(http: httpx.Client) -> None:
    assert MAX_HOLD <= 30  # every hold is bounded
    with JSONServer({"ok": True}) as server:
        server.gate = threading.Event()
        answers: list[int] = []
        caller = threading.Thread(target=lambda: answers.append(http.get(server.url).status_code))
        caller.start()
        assert server.entered.wait(10)
        assert answers == []  # held by the gate
        server.gate.set()
        caller.join(10)
        assert answers == [200]
