"""Call-end webhooks against a real HTTP server on 127.0.0.1, with tiny retry times."""

import hashlib
import hmac
import json
import socket
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from appliance.errors import CallrecError
from appliance.webhook import Webhook, WebhookError, call_event, sign, verify

SECRET = "s3cret-shared-with-the-crm"
FAST = {"timeout_s": 0.2, "retry_first_s": 0.01, "retry_max_s": 0.02}


class Receiver:
    """An HTTP server that records every request and answers with the scripted statuses in turn
    (200 once they are used up), after `delay_s`."""

    def __init__(self, statuses=(), delay_s=0.0):
        self.statuses = list(statuses)
        self.delay_s = delay_s
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with receiver.lock:
                    receiver.requests.append({"method": "POST", "path": self.path,
                                              "headers": dict(self.headers), "body": body})
                    status = receiver.statuses.pop(0) if receiver.statuses else 200
                time.sleep(receiver.delay_s)
                try:
                    self.send_response(status)
                    if 300 <= status < 400:
                        self.send_header("Location", "/elsewhere")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                except OSError:
                    pass    # the client gave up waiting, as it should

            def do_GET(self):
                with receiver.lock:
                    receiver.requests.append({"method": "GET", "path": self.path})
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.01,), daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch):
    for name in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def webhooks():
    """Make webhooks that are stopped at the end of the test."""
    made = []

    def make(url, secret=SECRET, **kwargs):
        hook = Webhook(url, secret, **{**FAST, **kwargs})
        made.append(hook)
        return hook
    yield make
    for hook in made:
        hook.stop(timeout=2)


def wait_for(condition, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.005)


def event(n=1):
    return {"event": "call.ended", "id": n, "number": "+3225551234", "name": "Émile"}


def test_signature_verifies_with_the_shared_secret_only(webhooks):
    with Receiver() as receiver:
        hook = webhooks(receiver.url)
        hook.start()
        hook.send(event())
        wait_for(lambda: hook.delivered == 1)
    [request] = receiver.requests
    headers, body = request["headers"], request["body"]
    assert headers["Content-Type"] == "application/json"
    assert json.loads(body) == event()
    assert uuid.UUID(headers["X-Callrec-Delivery"]).version == 4
    timestamp, signature = headers["X-Callrec-Timestamp"], headers["X-Callrec-Signature"]
    assert abs(int(timestamp) - time.time()) < 5
    assert signature.startswith("sha256=")
    assert verify(SECRET, timestamp, body, signature)
    assert verify(SECRET, timestamp, body, signature, tolerance_s=300)
    assert not verify("another secret", timestamp, body, signature)
    assert not verify(SECRET, timestamp, body.replace(b"1", b"2"), signature)
    assert not verify(SECRET, str(int(timestamp) + 1), body, signature)


def test_sign_is_hmac_of_timestamp_dot_body():
    body = b'{"event":"call.ended"}'
    expected = hmac.new(b"k", b"1700000000." + body, hashlib.sha256).hexdigest()
    assert sign("k", 1700000000, body) == "sha256=" + expected
    assert sign("k", "1700000000", body) == sign("k", 1700000000, body)
    signature = sign("k", 1700000000, body)
    assert verify("k", 1700000000, body, signature, tolerance_s=300, now=1700000100)
    assert not verify("k", 1700000000, body, signature, tolerance_s=300, now=1700000400)
    assert not verify("k", "not a time", body, signature, tolerance_s=300)
    assert not verify("k", 1700000000, body, "sha256=" + "0" * 64)
    assert not verify("k", 1700000000, body, "sha256=é")


def test_failures_are_retried_with_the_same_delivery_id(webhooks, caplog):
    with Receiver([500, 500, 200]) as receiver:
        hook = webhooks(receiver.url)
        hook.start()
        hook.send(event())
        wait_for(lambda: hook.delivered == 1)
    assert len(receiver.requests) == 3
    ids = {r["headers"]["X-Callrec-Delivery"] for r in receiver.requests}
    assert len(ids) == 1
    assert len({r["body"] for r in receiver.requests}) == 1
    for request in receiver.requests:
        headers = request["headers"]
        assert verify(SECRET, headers["X-Callrec-Timestamp"], request["body"],
                      headers["X-Callrec-Signature"])
    assert "attempt 2 of 10 failed: HTTP 500" in caplog.text


@pytest.mark.parametrize("status", [302, 408, 429, 503])
def test_retried_statuses(webhooks, status):
    with Receiver([status]) as receiver:
        hook = webhooks(receiver.url)
        hook.start()
        hook.send(event())
        wait_for(lambda: hook.delivered == 1)
    # A redirect is not followed: urllib would have turned the POST into a GET without a body.
    assert [(r["method"], r["path"]) for r in receiver.requests] == [("POST", "/hook")] * 2


def test_a_4xx_is_not_retried(webhooks, caplog):
    with Receiver([400] * 5) as receiver:
        hook = webhooks(receiver.url)
        hook.start()
        hook.send(event(7))
        wait_for(lambda: hook.rejected == 1)
        time.sleep(0.2)     # ten times the retry delay: a retry would have come by now
    assert len(receiver.requests) == 1
    assert hook.delivered == hook.given_up == 0
    assert "call.ended of call 7" in caplog.text and "HTTP 400" in caplog.text
    assert "not retried" in caplog.text


@pytest.fixture(params=["refused", "silent"])
def dead_endpoint(request):
    """A URL where nothing listens (connection refused), or a server that answers too late."""
    if request.param == "refused":
        # Bound but not listening: connecting is refused, and no other test can take the port.
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/hook", None
        sock.close()
    else:
        with Receiver([200] * 1000, delay_s=1.0) as receiver:
            yield receiver.url, receiver


def test_a_dead_endpoint_never_delays_send_and_is_given_up(webhooks, dead_endpoint, caplog):
    url, receiver = dead_endpoint
    hook = webhooks(url, timeout_s=0.1, max_attempts=3)
    hook.start()
    started = time.perf_counter()
    for n in range(100):
        hook.send(event(n))
    # Blocking on the dead endpoint would take 0.1 s a send: 100 sends stay far below that.
    assert time.perf_counter() - started < 0.5
    wait_for(lambda: hook.given_up >= 1)
    hook.stop(timeout=2)
    assert not hook.is_alive()
    assert hook.delivered == 0
    assert "gave up on call.ended of call 0" in caplog.text and "after 3 attempts" in caplog.text
    assert "events not delivered" in caplog.text
    if receiver is not None:
        first = [r for r in receiver.requests if json.loads(r["body"])["id"] == 0]
        assert len(first) == 3
        assert len({r["headers"]["X-Callrec-Delivery"] for r in first}) == 1


def test_a_full_queue_drops_the_oldest_and_keeps_the_order(webhooks, caplog):
    with Receiver() as receiver:
        hook = webhooks(receiver.url, queue_size=3)
        for n in range(5):
            hook.send(event(n))     # not started yet: nothing leaves the queue
        assert hook.dropped == 2
        assert caplog.text.count("queue full") == 1     # one warning, not one per event
        hook.start()
        wait_for(lambda: hook.delivered == 3)
    assert [json.loads(r["body"])["id"] for r in receiver.requests] == [2, 3, 4]


def test_send_refuses_what_json_cannot_carry(webhooks):
    hook = webhooks("http://127.0.0.1:9/hook")
    with pytest.raises(TypeError):
        hook.send({"when": object()})


@pytest.mark.parametrize("url, secret", [("ftp://crm.example/hook", SECRET),
                                         ("crm.example/hook", SECRET),
                                         ("https://crm.example/hook", "")])
def test_unusable_settings_are_refused(url, secret):
    with pytest.raises(WebhookError) as error:
        Webhook(url, secret)
    assert isinstance(error.value, CallrecError) and isinstance(error.value, ValueError)


def test_call_event_carries_the_public_fields_and_the_file_name_only():
    row = {"id": 42, "line": "t1", "direction": "incoming", "number": "+3225551234",
           "started_at": "2026-03-21T14:05:00.000Z", "answered_at": "2026-03-21T14:05:03.000Z",
           "ended_at": "2026-03-21T14:07:00.000Z", "duration_s": 117.0, "purpose": "agreement",
           "state": "complete", "sha256": "ab" * 32, "file": "archive/2026/03/21/42.opus",
           "notice_played_at": "2026-03-21T14:05:03.100Z", "spool": None, "held": 0,
           "size_bytes": 1234, "hold_reason": None, "contact_name": "Bakery Anna"}
    assert call_event(row) == {
        "event": "call.ended", "id": 42, "line": "t1", "direction": "incoming",
        "number": "+3225551234", "started_at": "2026-03-21T14:05:00.000Z",
        "answered_at": "2026-03-21T14:05:03.000Z", "ended_at": "2026-03-21T14:07:00.000Z",
        "duration_s": 117.0, "purpose": "agreement", "state": "complete", "sha256": "ab" * 32,
        "file": "42.opus", "notice_played_at": "2026-03-21T14:05:03.100Z", "contact_name": "Bakery Anna"}
    missed = call_event({"id": 43, "state": "missed", "file": None})
    assert missed["file"] is None and missed["answered_at"] is None
    json.dumps(missed)


def test_stop_without_start_is_harmless():
    Webhook("http://127.0.0.1:9/hook", SECRET).stop(timeout=1)
