"""Call-end webhooks against a real HTTP server on 127.0.0.1, with tiny retry times, through the
outbox of a real catalogue in a temporary folder."""

import hashlib
import hmac
import json
import socket
import sqlite3
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from appliance import webhook as webhook_module
from appliance.errors import CallrecError
from appliance.store.catalogue import Catalogue
from appliance.store.outbox import Outbox
from appliance.webhook import Webhook, WebhookError, call_event, sign, verify

SECRET = "s3cret-shared-with-the-crm"
FAST = {"timeout_s": 0.2, "retry_first_s": 0.01, "retry_max_s": 0.02}


class Receiver:
    """An HTTP server that records every request and answers with the scripted statuses in turn
    (200 once they are used up), after `delay_s`. On `port` if given, else on a free one."""

    def __init__(self, statuses=(), delay_s=0.0, port=0):
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

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
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
def data(tmp_path):
    """The data folder whose catalogue holds the outbox."""
    return tmp_path / "data"


@pytest.fixture
def catalogues(data):
    """Open the catalogue of `data` (once per simulated process); closed at the end of the test."""
    opened = []

    def open_catalogue():
        catalogue = Catalogue(data)
        opened.append(catalogue)
        return catalogue
    yield open_catalogue
    for catalogue in opened:
        catalogue.close()


@pytest.fixture
def catalogue(catalogues):
    return catalogues()


@pytest.fixture
def webhooks(catalogue):
    """Make webhooks (on the test's catalogue unless given one) that are stopped at the end of
    the test."""
    made = []

    def make(url, secret=SECRET, catalogue=catalogue, **kwargs):
        hook = Webhook(url, secret, catalogue, **{**FAST, **kwargs})
        made.append(hook)
        return hook
    yield make
    for hook in made:
        hook.stop(timeout=2)


class DeadPort:
    """A port where nothing listens: bound but not listening, so connecting is refused and no
    other test can take it. `close()` frees it for a Receiver (the receiver comes back up)."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}/hook"

    def close(self):
        self.sock.close()


@pytest.fixture
def dead_port():
    port = DeadPort()
    yield port
    port.close()


def waiting(catalogue):
    """The outbox's rows, oldest first."""
    return Outbox(catalogue).entries()


def wait_for(condition, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.005)


def event(n=1):
    return {"event": "call.ended", "id": n, "number": "+3225551234", "name": "Émile"}


def test_signature_verifies_with_the_shared_secret_only(webhooks, catalogue):
    with Receiver() as receiver:
        hook = webhooks(receiver.url)
        hook.start()
        hook.send(event())
        wait_for(lambda: hook.delivered == 1)
    assert waiting(catalogue) == []     # delivered: gone from the outbox
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


def test_failures_are_retried_with_the_same_delivery_id(webhooks, catalogue, caplog):
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
    assert waiting(catalogue) == []


def test_a_call_taken_by_the_crm_is_marked_sent_and_one_refused_is_not(webhooks, catalogue):
    """What a customer's access report says went to the CRM: the calls whose event it took."""
    calls = [catalogue.add_call(line="t1", direction="incoming", number="+3225551234", started_at="2026-12-01T10:00:00Z",
                                purpose="training", state="missed") for _ in range(2)]
    with Receiver([200, 400]) as receiver:
        hook = webhooks(receiver.url)
        hook.start()
        hook.send(event(calls[0]))
        hook.send(event(calls[1]))
        wait_for(lambda: hook.delivered + hook.rejected == 2)
    taken, refused = (catalogue.get_call(call_id) for call_id in calls)
    assert taken["crm_sent_at"] is not None and refused["crm_sent_at"] is None
    assert [e["event"] for e in catalogue.ledger_of(calls[0])[0]] == ["sent-to-crm"]
    assert catalogue.ledger_of(calls[1])[0] == []


@pytest.mark.parametrize("status", [302, 408, 429, 503])
def test_retried_statuses(webhooks, status):
    with Receiver([status]) as receiver:
        hook = webhooks(receiver.url)
        hook.start()
        hook.send(event())
        wait_for(lambda: hook.delivered == 1)
    # A redirect is not followed: urllib would have turned the POST into a GET without a body.
    assert [(r["method"], r["path"]) for r in receiver.requests] == [("POST", "/hook")] * 2


def test_a_4xx_is_not_retried(webhooks, catalogues, caplog):
    first = catalogues()
    with Receiver([400] * 5) as receiver:
        hook = webhooks(receiver.url, catalogue=first)
        hook.start()
        hook.send(event(7))
        wait_for(lambda: hook.rejected == 1)
        assert waiting(first) == []         # refused: removed from the outbox
        time.sleep(0.2)     # ten times the retry delay: a retry would have come by now
        hook.stop(timeout=2)
        # Nor after a restart.
        again = webhooks(receiver.url, catalogue=catalogues())
        again.start()
        again.send(event(8))
        wait_for(lambda: again.rejected == 1)
    assert [json.loads(r["body"])["id"] for r in receiver.requests] == [7, 8]
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


def test_a_dead_endpoint_never_delays_send_and_is_given_up(webhooks, catalogue, dead_endpoint,
                                                           caplog):
    url, receiver = dead_endpoint
    hook = webhooks(url, timeout_s=0.1, max_attempts=3)
    hook.start()
    started = time.perf_counter()
    for n in range(20):
        hook.send(event(n))
    # Blocking on the dead endpoint would take 0.1 s a send (2 s); a send is one small write.
    assert time.perf_counter() - started < 1.0
    wait_for(lambda: hook.given_up >= 1)
    hook.stop(timeout=2)
    assert not hook.is_alive()
    assert hook.delivered == 0
    assert "gave up on call.ended of call 0" in caplog.text and "after 3 attempts" in caplog.text
    assert "events not delivered" in caplog.text
    # Given up: removed; the others wait in the outbox, in order.
    left = [json.loads(entry.body)["id"] for entry in waiting(catalogue)]
    assert left == list(range(hook.given_up, 20))
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


def test_send_refuses_what_json_cannot_carry(webhooks, catalogue):
    hook = webhooks("http://127.0.0.1:9/hook")
    with pytest.raises(TypeError):
        hook.send({"when": object()})
    with pytest.raises(ValueError):
        hook.send({"name": "\ud800"})     # a lone surrogate: not UTF-8
    assert waiting(catalogue) == []


@pytest.mark.parametrize("url, secret", [("ftp://crm.example/hook", SECRET),
                                         ("crm.example/hook", SECRET),
                                         ("https://crm.example/hook", "")])
def test_unusable_settings_are_refused(url, secret, catalogue):
    with pytest.raises(WebhookError) as error:
        Webhook(url, secret, catalogue)
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


def test_stop_without_start_is_harmless(catalogue):
    Webhook("http://127.0.0.1:9/hook", SECRET, catalogue).stop(timeout=1)


# -- the outbox: events survive a restart -----------------------------------------------------------

def test_an_event_sent_while_the_receiver_is_down_survives_a_restart(webhooks, catalogues, dead_port):
    first = catalogues()
    hook = webhooks(dead_port.url, catalogue=first, max_attempts=1000)
    hook.start()
    hook.send(event(1))
    wait_for(lambda: waiting(first) and waiting(first)[0].attempts >= 2)
    hook.stop(timeout=2)
    [stored] = waiting(first)
    first.close()           # the process ends; a new one opens the same data folder

    dead_port.close()       # and the receiver is up again, at the same URL
    with Receiver(port=dead_port.port) as receiver:
        again = webhooks(dead_port.url, catalogue=catalogues())
        again.start()
        wait_for(lambda: again.delivered == 1)
        [request] = receiver.requests
        assert request["headers"]["X-Callrec-Delivery"] == stored.delivery
        assert uuid.UUID(stored.delivery).version == 4
        assert request["body"] == stored.body.encode()
        assert json.loads(request["body"]) == event(1)
        headers = request["headers"]
        assert verify(SECRET, headers["X-Callrec-Timestamp"], request["body"],
                      headers["X-Callrec-Signature"])
        assert waiting(again.outbox.catalogue) == []
        again.stop(timeout=2)
        time.sleep(0.05)
    assert len(receiver.requests) == 1      # acknowledged: never sent again


def test_the_order_is_kept_across_a_restart(webhooks, catalogues, dead_port):
    hook = webhooks(dead_port.url, catalogue=catalogues(), max_attempts=1000)
    hook.start()
    for n in (1, 2, 3):
        hook.send(event(n))
    wait_for(lambda: waiting(hook.outbox.catalogue)[0].attempts >= 1)
    hook.stop(timeout=2)

    dead_port.close()
    with Receiver(port=dead_port.port) as receiver:
        again = webhooks(dead_port.url, catalogue=catalogues())
        again.send(event(4))        # sent after the restart, before the thread runs
        again.start()
        again.send(event(5))
        wait_for(lambda: again.delivered == 5)
    assert [json.loads(r["body"])["id"] for r in receiver.requests] == [1, 2, 3, 4, 5]
    assert waiting(again.outbox.catalogue) == []


def test_failed_attempts_are_counted_across_a_restart(webhooks, catalogues, dead_port, caplog):
    # Before the restart: one attempt fails, the next is due in 5 s.
    hook = webhooks(dead_port.url, catalogue=catalogues(), max_attempts=2, retry_first_s=5.0,
                    retry_max_s=5.0)
    hook.start()
    hook.send(event(9))
    wait_for(lambda: waiting(hook.outbox.catalogue)[0].attempts == 1)
    hook.stop(timeout=2)

    dead_port.close()
    with Receiver([500] * 5, port=dead_port.port) as receiver:
        # After it: the wait is resumed, but not longer than this process's retry_max_s; the
        # second attempt is the last one.
        again = webhooks(dead_port.url, catalogue=catalogues(), max_attempts=2)
        again.start()
        wait_for(lambda: again.given_up == 1, timeout=2)
        time.sleep(0.1)
    assert len(receiver.requests) == 1
    assert "after 2 attempts" in caplog.text
    assert waiting(again.outbox.catalogue) == []


def test_a_catalogue_that_refuses_delays_events_but_loses_none(webhooks, catalogue, monkeypatch,
                                                               caplog):
    monkeypatch.setattr(webhook_module, "STORE_RETRY_FIRST_S", 0.01)
    failures = {"add": 1, "next": 2, "done": 1}
    for name in failures:
        real = getattr(Outbox, name)

        def failing(self, *args, _name=name, _real=real, **kwargs):
            if failures[_name]:
                failures[_name] -= 1
                raise sqlite3.OperationalError("database is locked")
            return _real(self, *args, **kwargs)
        monkeypatch.setattr(Outbox, name, failing)

    with Receiver() as receiver:
        hook = webhooks(receiver.url)
        hook.send(event(1))         # the write fails: kept in memory, no exception
        assert waiting(catalogue) == []
        hook.send(event(2))
        hook.start()
        wait_for(lambda: hook.delivered == 2)
        time.sleep(0.05)
    assert hook.is_alive()
    assert not any(failures.values())
    # The failed delete after the first delivery did not send it again.
    assert [json.loads(r["body"])["id"] for r in receiver.requests] == [1, 2]
    assert waiting(catalogue) == []
    assert "the catalogue refuses" in caplog.text


def test_calls_erased_in_another_process_are_named_to_the_receiver_by_id_only(webhooks, catalogues, data):
    from appliance.config import DEFAULT_PURPOSES, StoreConfig
    from appliance.store.erasure import erase_subject
    from appliance.store.retention import Store
    from appliance.webhook import OUTBOX_POLL_S
    from conftest import record_call

    recorder_side, web_side = catalogues(), catalogues()
    with Receiver() as crm:
        hook = webhooks(crm.url, catalogue=recorder_side)
        hook.start()
        one, two, three = (record_call(web_side, data) for _ in range(3))
        silent = Store(web_side, data, DEFAULT_PURPOSES, StoreConfig())            # no webhook configured
        silent.erase(one["id"], "user:owner")
        store = Store(web_side, data, DEFAULT_PURPOSES, StoreConfig(), tell_webhook=True)
        store.erase(two["id"], "user:owner")
        erase_subject(store, "+32 2 555 12 34", "user:dpo")        # the number of the third
        wait_for(lambda: len(crm.requests) == 2, OUTBOX_POLL_S + 5)
    bodies = [json.loads(r["body"]) for r in crm.requests]
    assert [(b["event"], b["ids"]) for b in bodies] == [("calls.erased", [two["id"]]), ("calls.erased", [three["id"]])]
    assert all(b"555" not in r["body"] for r in crm.requests)
    assert waiting(recorder_side) == []
