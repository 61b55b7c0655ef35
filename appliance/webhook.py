"""Call-end notifications: each finished call is POSTed as JSON to a CRM's URL, signed.

One thread delivers the events in the order they were sent, one at a time. `send` only puts the
event in an in-memory queue, so a slow or dead CRM never holds up the recorder; when the queue is
full the oldest waiting event is dropped (with a warning). Events still queued when the process
stops are lost: the catalogue remains the record of the calls.

The request, for receivers:

- `POST <url>` with `Content-Type: application/json`, the body a UTF-8 JSON object (for a call
  end, see `call_event`).
- `X-Callrec-Delivery`: a UUID4 naming the event; it is the same on every retry of that event, so
  a receiver that saw it already answers 2xx and ignores it.
- `X-Callrec-Timestamp`: Unix seconds when this attempt was signed (it changes between retries).
- `X-Callrec-Signature`: `sha256=<hex>`, the HMAC-SHA256 with the shared secret (UTF-8) as key of
  the bytes `f"{timestamp}.".encode() + body`: the timestamp text as sent in the header, a dot,
  then the body exactly as received (before any JSON parsing). Signing the timestamp lets a
  receiver refuse a replayed old request; `verify(..., tolerance_s=300)` does both checks.

Answers: any 2xx is success. 4xx other than 408 and 429 means the receiver refuses this event:
it is logged and not retried. Anything else (other statuses, redirects, which are not followed
because urllib would resend a POST as a GET without its body, timeouts, refused or reset
connections) is retried after `retry_first_s`, doubling up to `retry_max_s`, or after the
`Retry-After` seconds of a 429 or 503 when longer, until `max_attempts` attempts have been made;
then the event is logged as given up. While one event is being retried the later ones wait
behind it: when the CRM is down it is down for all of them, and the order is kept. With the
defaults an event is given up about 14 minutes after its first attempt.
"""

import hashlib
import hmac
import http.client
import json
import logging
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections import deque
from dataclasses import dataclass
from pathlib import PurePosixPath

from appliance.errors import CallrecError

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Callrec-Signature"
TIMESTAMP_HEADER = "X-Callrec-Timestamp"
DELIVERY_HEADER = "X-Callrec-Delivery"
USER_AGENT = "callrec-webhook/1"
RETRIED_4XX = (408, 429)
RETRY_AFTER_STATUSES = (429, 503)
DROP_WARNING_INTERVAL_S = 60.0
MAX_RESPONSE_BYTES = 64 * 1024      # the answer's body is only drained, never used

# The fields of a call row that a call.ended event carries, in this order.
EVENT_FIELDS = (
    "id", "line", "direction", "number", "started_at", "answered_at", "ended_at", "duration_s",
    "purpose", "state", "sha256", "file", "notice_played_at", "contact_name",
)


class WebhookError(CallrecError, ValueError):
    """The webhook's URL, secret or limits are unusable."""


def sign(secret: str, timestamp: int | str, body: bytes) -> str:
    """The `X-Callrec-Signature` value for `body` sent at `timestamp`: "sha256=<hex HMAC-SHA256>"
    keyed with `secret` over `f"{timestamp}.".encode() + body`."""
    message = f"{timestamp}.".encode() + body
    return "sha256=" + hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def verify(secret: str, timestamp: int | str, body: bytes, signature: str, *,
           tolerance_s: float | None = None, now: float | None = None) -> bool:
    """For receivers: is `signature` (the `X-Callrec-Signature` header) right for `body` (the raw
    request body) and `timestamp` (the `X-Callrec-Timestamp` header, as received)?

    The comparison takes the same time wherever the strings differ. With `tolerance_s`, a
    timestamp further than that from `now` (default: the current time) is refused too, which stops
    a captured request from being replayed later; allow for the two clocks' difference.
    """
    if tolerance_s is not None:
        try:
            sent = int(timestamp)
        except ValueError:
            return False
        if abs((time.time() if now is None else now) - sent) > tolerance_s:
            return False
    expected = sign(secret, timestamp, body)
    return hmac.compare_digest(expected.encode(), signature.encode())


def call_event(row: dict) -> dict:
    """The `call.ended` payload for a finished call row of the catalogue.

    `file` is the recording's file name without its folder (None when nothing was recorded); the
    other fields are as in the catalogue, None when missing.
    """
    event = {"event": "call.ended"}
    event.update((name, row.get(name)) for name in EVENT_FIELDS)
    if event["file"]:
        event["file"] = PurePosixPath(event["file"]).name
    return event


@dataclass
class _Delivery:
    id: str
    body: bytes
    label: str
    attempts: int = 0


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None     # the 3xx is then raised as an HTTPError and retried like any failure


class Webhook(threading.Thread):
    """Delivers events to `url`, signed with `secret`, from its own thread (see the module
    docstring for the protocol, the retries and the order).

    Call `start()` once, `send(event)` from any thread, and `stop()` at shutdown. Times are in
    seconds. `delivered`, `rejected` (refused with a 4xx), `given_up` and `dropped` (the queue was
    full) count events since the start, for status pages.
    """

    def __init__(self, url: str, secret: str, timeout_s: float = 5.0, retry_first_s: float = 2.0,
                 retry_max_s: float = 300.0, max_attempts: int = 10, queue_size: int = 1000):
        super().__init__(name="webhook", daemon=True)
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise WebhookError(f"webhook URL {url!r}: expected http://host/path or https://host/path")
        if not secret:
            raise WebhookError("webhook secret is empty: set the secret shared with the receiver")
        if timeout_s <= 0 or retry_first_s < 0 or retry_max_s < retry_first_s:
            raise WebhookError("webhook times: expected timeout_s > 0 and "
                               "0 <= retry_first_s <= retry_max_s")
        if max_attempts < 1 or queue_size < 1:
            raise WebhookError("webhook limits: expected max_attempts >= 1 and queue_size >= 1")
        self.url = url
        self.secret = secret
        self.timeout_s = timeout_s
        self.retry_first_s = retry_first_s
        self.retry_max_s = retry_max_s
        self.max_attempts = max_attempts
        self.queue_size = queue_size
        self.delivered = self.rejected = self.given_up = self.dropped = 0
        self._queue: deque[_Delivery] = deque()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._last_drop_warning: float | None = None
        self._opener = urllib.request.build_opener(_NoRedirect)

    def send(self, event: dict) -> None:
        """Queue `event` (a JSON-serialisable dict) for delivery and return at once.

        Raises TypeError or ValueError if `event` cannot be serialised: that is a bug of the caller.
        """
        body = json.dumps(event, ensure_ascii=False, separators=(",", ":")).encode()
        delivery = _Delivery(str(uuid.uuid4()), body, _label(event))
        with self._lock:
            if len(self._queue) >= self.queue_size:
                self._queue.popleft()
                self.dropped += 1
                self._warn_dropped()
            self._queue.append(delivery)
        self._wake.set()

    def _warn_dropped(self) -> None:
        # At most one warning a minute: a queue that is full stays full for a while, and a warning
        # per event would bury the log.
        now = time.monotonic()
        if self._last_drop_warning is None or now - self._last_drop_warning >= DROP_WARNING_INTERVAL_S:
            self._last_drop_warning = now
            log.warning("webhook %s: queue full (%d events waiting), dropped the oldest; %d dropped "
                        "since the start. Is the receiver down?", self.url, self.queue_size,
                        self.dropped)

    def stop(self, timeout: float | None = None) -> None:
        """End the thread: a request in flight is let finish (it lasts `timeout_s` at most), no
        retry is waited for, events still queued are logged as lost. Waits up to `timeout` for
        the thread (for ever if None)."""
        with self._lock:
            self._stopping.set()
            self._wake.set()
        if self.is_alive():
            self.join(timeout)

    # -- the thread --------------------------------------------------------------------------------

    def run(self) -> None:
        """Deliver queued events until stop()."""
        while not self._stopping.is_set():
            delivery = self._next()
            if delivery is None:
                self._wake.wait()
                continue
            try:
                self._deliver(delivery)
            except Exception:
                # A bug here must not silence every later notification.
                log.exception("webhook %s: %s failed unexpectedly; skipped", self.url, delivery.label)
                self.given_up += 1
        with self._lock:
            lost = len(self._queue)
            self._queue.clear()
        if lost:
            log.warning("webhook %s: stopped with %d events not delivered", self.url, lost)

    def _next(self) -> _Delivery | None:
        with self._lock:
            if self._queue:
                return self._queue.popleft()
            # Under the lock, as in send() and stop(): a wake-up can't be cleared unseen.
            if not self._stopping.is_set():
                self._wake.clear()
            return None

    def _deliver(self, delivery: _Delivery) -> None:
        delay = self.retry_first_s
        while True:
            delivery.attempts += 1
            status, problem, retry_after = self._attempt(delivery)
            if problem is None:
                self.delivered += 1
                log.debug("webhook %s: %s delivered (HTTP %d, attempt %d)", self.url, delivery.label,
                          status, delivery.attempts)
                return
            if status is not None and 400 <= status < 500 and status not in RETRIED_4XX:
                self.rejected += 1
                log.error("webhook %s: %s (delivery %s) refused: %s; not retried. Check the URL and "
                          "the secret against the receiver's settings", self.url, delivery.label,
                          delivery.id, problem)
                return
            if delivery.attempts >= self.max_attempts:
                self.given_up += 1
                log.error("webhook %s: gave up on %s (delivery %s) after %d attempts; last: %s",
                          self.url, delivery.label, delivery.id, delivery.attempts, problem)
                return
            wait = min(max(delay, retry_after or 0.0), self.retry_max_s)
            log.warning("webhook %s: %s attempt %d of %d failed: %s; retrying in %g s", self.url,
                        delivery.label, delivery.attempts, self.max_attempts, problem, wait)
            if self._stopping.wait(wait):
                with self._lock:
                    self._queue.appendleft(delivery)    # counted as lost by run()
                return
            delay = min(delay * 2, self.retry_max_s)

    def _attempt(self, delivery: _Delivery) -> tuple[int | None, str | None, float | None]:
        """POST once: (HTTP status or None, what went wrong or None, Retry-After seconds or None)."""
        timestamp = int(time.time())
        request = urllib.request.Request(self.url, data=delivery.body, method="POST", headers={
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            DELIVERY_HEADER: delivery.id,
            TIMESTAMP_HEADER: str(timestamp),
            SIGNATURE_HEADER: sign(self.secret, timestamp, delivery.body),
        })
        try:
            with self._opener.open(request, timeout=self.timeout_s) as response:
                response.read(MAX_RESPONSE_BYTES)
                return response.status, None, None
        except urllib.error.HTTPError as exc:
            exc.close()
            problem = f"HTTP {exc.code} {exc.reason}"
            if 300 <= exc.code < 400 and exc.headers.get("Location"):
                problem += f" (redirects to {exc.headers['Location']}: configure that URL)"
            retry_after = None
            if exc.code in RETRY_AFTER_STATUSES:
                retry_after = _seconds(exc.headers.get("Retry-After"))
            return exc.code, problem, retry_after
        except urllib.error.URLError as exc:
            return None, f"cannot connect: {exc.reason}", None
        except TimeoutError:
            return None, f"no answer within {self.timeout_s:g} s", None
        except (OSError, http.client.HTTPException) as exc:
            return None, f"{type(exc).__name__}: {exc}", None


def _label(event: dict) -> str:
    """How logs name an event, e.g. "call.ended of call 42"."""
    kind = event.get("event", "event")
    return f"{kind} of call {event['id']}" if "id" in event else str(kind)


def _seconds(value: str | None) -> float | None:
    """A Retry-After given in seconds; its HTTP-date form is rare enough to ignore."""
    if value is None or not value.strip().isdigit():
        return None
    return float(value.strip())
