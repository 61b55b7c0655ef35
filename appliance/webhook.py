"""Call-end notifications: each finished call is POSTed as JSON to a CRM's URL, signed; so are
the ids of calls erased for a privacy request (`calls.erased`, see `erasure_event`).

`send` writes the event to the outbox, a table of the catalogue (see `appliance.store.outbox`),
and returns: a slow or dead CRM never holds up the recorder. One thread delivers the events from
there, oldest first, one at a time, and deletes each once its fate is known. Events survive a
stop, a crash or a power cut: after a restart the waiting ones are sent, in order, with the same
delivery id and body, their failed attempts still counted. Delivery is at least once: an event
whose answer was lost (the process stopped during the request, or before deleting it) is sent
again, so receivers must use the delivery id to ignore repeats.

The request, for receivers:

- `POST <url>` with `Content-Type: application/json`, the body a UTF-8 JSON object (for a call
  end, see `call_event`; for an alarm raised, still standing or cleared, `appliance.alarms.event`). The body is the same bytes on every attempt of an event.
- `X-Callrec-Delivery`: a UUID4 naming the event. It is the idempotency key: it is the same on
  every retry of that event, before and after a restart of the appliance, so a receiver that saw
  it already answers 2xx and ignores it.
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
defaults an event is given up about 14 minutes after its first attempt (plus the time the
appliance was off meanwhile: a wait cut by a restart is resumed, never longer than `retry_max_s`).

At most `queue_size` events wait: when one more comes, the oldest waiting one is dropped with a
warning. When the catalogue refuses writes (locked, a full disk), `send` keeps the event in memory
(up to `queue_size` too) and the thread writes it once the catalogue takes writes again; only those
are lost if the process stops first. The catalogue remains the record of the calls.
"""

import hashlib
import hmac
import http.client
import json
import logging
import sqlite3
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections import deque
from pathlib import PurePosixPath

from appliance.errors import CallrecError
from appliance.service import Service
from appliance.store.outbox import Entry, Outbox
from appliance.store.sealing import is_sealed_field

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Callrec-Signature"
TIMESTAMP_HEADER = "X-Callrec-Timestamp"
DELIVERY_HEADER = "X-Callrec-Delivery"
USER_AGENT = "callrec-webhook/1"
RETRIED_4XX = (408, 429)
RETRY_AFTER_STATUSES = (429, 503)
DROP_WARNING_INTERVAL_S = 60.0
MAX_RESPONSE_BYTES = 64 * 1024      # the answer's body is only drained, never used
STORE_RETRY_FIRST_S = 0.1           # a catalogue that refuses is tried again after this,
STORE_RETRY_MAX_S = 30.0            # doubling up to this
STORE_REPORT_INTERVAL_S = 60.0      # and logged at most this often while it keeps refusing
OUTBOX_POLL_S = 5.0                 # an idle outbox is looked at again: events written by another process

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
    other fields are as in the catalogue, None when missing, and None when sealed (the recorder
    of a sealed store cannot read the number or the name back: the receiver asks the API).
    """
    event = {"event": "call.ended"}
    event.update((name, None if is_sealed_field(row.get(name)) else row.get(name)) for name in EVENT_FIELDS)
    if event["file"]:
        event["file"] = PurePosixPath(event["file"]).name
    return event


def erasure_event(call_ids: list[int], erased_at: str) -> dict:
    """The `calls.erased` payload: calls the appliance erased (a privacy request), for a receiver
    to erase what it keeps of them. Only their ids: the event itself names nobody."""
    return {"event": "calls.erased", "ids": list(call_ids), "erased_at": erased_at}


def serialised(event: dict) -> str:
    """An event's body as it is sent, compact JSON; raises ValueError for what cannot be sent."""
    body = json.dumps(event, ensure_ascii=False, separators=(",", ":"))
    body.encode()       # a lone surrogate cannot be sent: ValueError now, not at every attempt
    return body


def add_to_outbox(catalogue, event: dict, keep: int = 1000) -> None:
    """Write `event` to the outbox from a process that runs no webhook thread (the web UI): the
    recorder's webhook thread delivers it, in order with the others, when it runs."""
    Outbox(catalogue).add(str(uuid.uuid4()), serialised(event), keep=keep)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None     # the 3xx is then raised as an HTTPError and retried like any failure


class Webhook(Service):
    """Delivers events to `url`, signed with `secret`, from its own thread, through the outbox of
    `catalogue` (see the module docstring for the protocol, the retries and the order).

    Call `start()` once, `send(event)` from any thread but a real-time one (it writes to the
    catalogue), and `stop()` at shutdown. Times are in seconds. `delivered`, `rejected` (refused
    with a 4xx), `given_up` and `dropped` (more than `queue_size` waited) count events since the
    start, for status pages.
    """

    def __init__(self, url: str, secret: str, catalogue, timeout_s: float = 5.0,
                 retry_first_s: float = 2.0, retry_max_s: float = 300.0, max_attempts: int = 10,
                 queue_size: int = 1000):
        super().__init__("webhook")
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
        self.outbox = Outbox(catalogue)
        self.timeout_s = timeout_s
        self.beat_s = max(Service.beat_s, 2 * timeout_s)     # an attempt, and the outbox's writes
        self.retry_first_s = retry_first_s
        self.retry_max_s = retry_max_s
        self.max_attempts = max_attempts
        self.queue_size = queue_size
        self.delivered = self.rejected = self.given_up = self.dropped = 0
        # Events the catalogue did not take yet, oldest first: (delivery id, body).
        self._pending: deque[tuple[str, str]] = deque()
        self._lock = threading.Lock()           # guards _pending, the counters and the reports
        self._writing = threading.Lock()        # held by whoever writes _pending to the outbox
        self._due: tuple[int, float] | None = None      # (outbox id, monotonic time it is due)
        self._unrecorded = None     # the outcome of the last attempt, not yet in the outbox
        self._last_drop_warning: float | None = None
        self._refused_since: float | None = None        # monotonic: the catalogue refuses since
        self._refusal_reported = 0.0
        self._opener = urllib.request.build_opener(_NoRedirect)

    def send(self, event: dict) -> None:
        """Write `event` (a JSON-serialisable dict) to the outbox for delivery, wake the thread and
        return. If the catalogue refuses the write (or refused the last one), the event is kept in
        memory and written by the thread later; this never raises for that.

        Raises TypeError or ValueError if `event` cannot be serialised: that is a bug of the caller.
        """
        body = serialised(event)
        with self._lock:
            if len(self._pending) >= self.queue_size:
                self._pending.popleft()
                self._count_dropped(1)
            self._pending.append((str(uuid.uuid4()), body))
            refusing = self._refused_since is not None
        # While the catalogue refuses, a write would wait for its lock for seconds and fail: the
        # running thread retries it instead, with its back-off.
        refusing = refusing and self.is_alive()
        if not refusing:
            try:
                self._write_pending()
            except Exception as exc:
                self._catalogue_refuses(exc, "cannot write an event to the outbox; it waits in memory")
            else:
                self._catalogue_takes()
        self.wake()

    def _write_pending(self) -> None:
        """Write the events kept in memory to the outbox, oldest first; raises what the catalogue
        raises. If another thread is writing them, leaves them to it."""
        if not self._writing.acquire(blocking=False):
            return
        try:
            while True:
                with self._lock:
                    if not self._pending:
                        return
                    first = self._pending[0]
                dropped = self.outbox.add(*first, keep=self.queue_size)
                with self._lock:
                    if self._pending and self._pending[0] is first:     # unless dropped meanwhile
                        self._pending.popleft()
                    if dropped:
                        self._count_dropped(dropped)
        finally:
            self._writing.release()

    def _count_dropped(self, n: int) -> None:
        # Under self._lock. At most one warning a minute: an outbox that is full stays full for a
        # while, and a warning per event would bury the log.
        self.dropped += n
        now = time.monotonic()
        if self._last_drop_warning is None or now - self._last_drop_warning >= DROP_WARNING_INTERVAL_S:
            self._last_drop_warning = now
            log.warning("webhook %s: queue full (%d events waiting), dropped the oldest; %d dropped "
                        "since the start. Is the receiver down?", self.url, self.queue_size,
                        self.dropped)

    def _catalogue_refuses(self, exc: Exception, doing: str) -> None:
        """Log a failed catalogue read or write: at once, then at most once every
        STORE_REPORT_INTERVAL_S while it goes on."""
        now = time.monotonic()
        with self._lock:
            if self._refused_since is None:
                self._refused_since = now
            elif now - self._refusal_reported < STORE_REPORT_INTERVAL_S:
                return
            self._refusal_reported = now
        if isinstance(exc, sqlite3.Error):
            log.warning("webhook %s: %s: the catalogue refuses (%s); trying again", self.url, doing, exc)
        else:   # a defect, not a passing state of the catalogue
            log.error("webhook %s: %s", self.url, doing, exc_info=exc)

    def _catalogue_takes(self) -> None:
        with self._lock:
            since, self._refused_since = self._refused_since, None
        if since is not None:
            log.info("webhook %s: the catalogue takes the outbox's writes again after %.1f s",
                     self.url, time.monotonic() - since)

    def stop(self, timeout: float | None = None) -> None:
        """End the thread: a request in flight is let finish (it lasts `timeout_s` at most), no
        retry is waited for. Waits up to `timeout` for the thread (for ever if None). Undelivered
        events stay in the outbox for the next start; only those the catalogue never took are
        lost (logged)."""
        super().stop(timeout)
        try:
            self._write_pending()
            waiting = self.outbox.count()
        except Exception as exc:
            log.warning("webhook %s: at stop, cannot read or write the outbox: %s", self.url, exc)
            waiting = 0
        with self._lock:
            lost = len(self._pending)
        if waiting:
            log.warning("webhook %s: stopped with %d events not delivered; they wait in the outbox "
                        "for the next start", self.url, waiting)
        if lost:
            log.error("webhook %s: stopped with %d events lost: the catalogue did not take them",
                      self.url, lost)

    # -- the thread --------------------------------------------------------------------------------

    def serve(self) -> None:
        """Deliver the outbox's events until stop(); survive a catalogue that refuses."""
        failures = 0
        while True:
            # Cleared before looking at the outbox: a send() that writes after the look wakes it
            # again, and a stop() has set `stopping` before it.
            self.woken.clear()
            if self.stopping.is_set():
                return
            self.beat()
            try:
                wait = self._step()
            except Exception as exc:
                self._catalogue_refuses(exc, "cannot use the outbox")
                failures += 1
                wait = min(STORE_RETRY_FIRST_S * 2 ** min(failures - 1, 16), STORE_RETRY_MAX_S)
            else:
                if failures or self._refused_since is not None:
                    self._catalogue_takes()
                failures = 0
            if wait is None:
                self.wait(OUTBOX_POLL_S)
            elif wait > 0:
                self.wait(wait)

    def _step(self) -> float | None:
        """Record the last outcome, write what waits in memory, then deliver the oldest event if it
        is due. Returns how long to wait before the next step (None: until woken)."""
        if self._unrecorded is not None:
            self._unrecorded()
            self._unrecorded = None
        self._write_pending()
        entry = self.outbox.next()
        if entry is None:
            return None
        left = self._left(entry)
        if left > 0:
            return left
        self._deliver(entry)
        return 0

    def _left(self, entry: Entry) -> float:
        """Seconds until `entry`'s next attempt. One first seen since the start (resumed after a
        restart) is due when the outbox says, but never later than `retry_max_s` from now: the
        wall clock may have jumped meanwhile (a Pi has no battery clock)."""
        now = time.monotonic()
        if self._due is None or self._due[0] != entry.id:
            left = 0.0
            if entry.next_attempt_at is not None:
                left = min(max(entry.next_attempt_at - time.time(), 0.0), self.retry_max_s)
            self._due = (entry.id, now + left)
        return self._due[1] - now

    def _deliver(self, entry: Entry) -> None:
        """One attempt of `entry`, and its outcome written to the outbox."""
        label = _label(entry.body)
        attempt = entry.attempts + 1
        try:
            status, problem, retry_after = self._attempt(entry)
        except Exception:
            # A bug here must not silence every later notification.
            log.exception("webhook %s: %s failed unexpectedly; skipped", self.url, label)
            self._settle(entry, "given_up")
            return
        if problem is None:
            log.debug("webhook %s: %s delivered (HTTP %d, attempt %d)", self.url, label, status,
                      attempt)
            self._settle(entry, "delivered")
        elif status is not None and 400 <= status < 500 and status not in RETRIED_4XX:
            log.error("webhook %s: %s (delivery %s) refused: %s; not retried. Check the URL and "
                      "the secret against the receiver's settings", self.url, label, entry.delivery,
                      problem)
            self._settle(entry, "rejected")
        elif attempt >= self.max_attempts:
            log.error("webhook %s: gave up on %s (delivery %s) after %d attempts; last: %s",
                      self.url, label, entry.delivery, attempt, problem)
            self._settle(entry, "given_up")
        else:
            wait = min(max(self._backoff(attempt), retry_after or 0.0), self.retry_max_s)
            log.warning("webhook %s: %s attempt %d of %d failed: %s; retrying in %g s", self.url,
                        label, attempt, self.max_attempts, problem, wait)
            self._due = (entry.id, time.monotonic() + wait)
            next_attempt_at = time.time() + wait
            self._record(lambda: self.outbox.attempted(entry.id, next_attempt_at))

    def _settle(self, entry: Entry, counter: str) -> None:
        """Delete `entry`, whose fate is known, then count it under `counter`."""
        def record():
            self.outbox.done(entry.id, delivered=counter == "delivered")
            with self._lock:
                setattr(self, counter, getattr(self, counter) + 1)
        self._record(record)

    def _record(self, write) -> None:
        """Write an attempt's outcome now; if the catalogue refuses, the next step writes it before
        anything else (rather than sending the event again)."""
        self._unrecorded = write
        write()
        self._unrecorded = None

    def _backoff(self, attempts: int) -> float:
        """The wait after `attempts` failed attempts: `retry_first_s`, doubling, up to `retry_max_s`."""
        return min(self.retry_first_s * 2.0 ** min(attempts - 1, 64), self.retry_max_s)

    def _attempt(self, entry: Entry) -> tuple[int | None, str | None, float | None]:
        """POST once: (HTTP status or None, what went wrong or None, Retry-After seconds or None)."""
        body = entry.body.encode()
        timestamp = int(time.time())
        request = urllib.request.Request(self.url, data=body, method="POST", headers={
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            DELIVERY_HEADER: entry.delivery,
            TIMESTAMP_HEADER: str(timestamp),
            SIGNATURE_HEADER: sign(self.secret, timestamp, body),
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


def _label(body: str) -> str:
    """How logs name an event, from its body, e.g. "call.ended of call 42"."""
    try:
        event = json.loads(body)
    except ValueError:
        return "event"
    if not isinstance(event, dict):
        return "event"
    kind = event.get("event", "event")
    return f"{kind} of call {event['id']}" if "id" in event else str(kind)


def _seconds(value: str | None) -> float | None:
    """A Retry-After given in seconds; its HTTP-date form is rare enough to ignore."""
    if value is None or not value.strip().isdigit():
        return None
    return float(value.strip())
