"""The recorder's control channel: a UNIX stream socket in the runtime folder (next to `live.json`)
through which the web UI pauses or resumes a call in progress and listens to it live, and asks the
recorder to reload its configuration (the web UI runs as a user of its own, which may not signal it).

One request per connection, one JSON object on one line; the answer is one JSON line, `{"ok":
true, ...}` or `{"ok": false, "error": "..."}` (a bad request changes nothing). After the answer
to `listen`, the call's audio follows as raw signed 16-bit little-endian PCM at the answer's
`rate` and `channels`, until the call ends (the recorder closes the connection). See
docs/control.md.

Audio never waits for a listener: a line hands each period to every listener's bounded queue and
drops it (counted) when the queue is full; the socket is written by a thread of this service's.
"""

import json
import logging
import os
import queue
import signal
import socket
import threading
from pathlib import Path

from appliance.service import Service

log = logging.getLogger(__name__)

SOCKET_NAME = "control.sock"
SOCKET_MODE = 0o660         # the web UI runs as the same user (or in the recorder's group)
MAX_REQUEST_BYTES = 4096
REQUEST_S = 5.0             # a client must send its request within this
QUEUE_S = 2.0               # the audio a listener may fall behind by before periods are dropped
SEND_BUFFER = 16 * 1024     # about a second of 8 kHz mono: a stalled listener holds little memory
COMMANDS = ("pause", "resume", "listen", "reload")


# Why a line refuses a request: the answer's `reason`, with `values`; `error` words it in English
# after the line's name (the web UI words each in its user's language).
REFUSALS = {
    "not-in-progress": "that call is not in progress",
    "several-calls": "several calls in progress: say which",
    "already-paused": "the call is already paused",
    "not-paused": "the call is not paused",
    "not-recorded": "the call is not being recorded",
    "no-answer": "no answer from the line",
    "listeners-full": "{limit} listeners already (listeners_per_line)",
}


class ControlError(Exception):
    """A request that cannot be carried out; its message is the answer's `error`, and a line's
    refusal (`refused`) names its `reason` too."""

    def __init__(self, message: str, reason: str | None = None, values: dict | None = None):
        super().__init__(message)
        self.reason = reason
        self.values = values or {}

    def answer(self) -> dict:
        """The answer that tells the client."""
        reason = {"reason": self.reason, "values": self.values} if self.reason else {}
        return {"ok": False, "error": str(self), **reason}


def refused(where: str, reason: str, **values) -> ControlError:
    """A line's refusal for one of REFUSALS; `where` names the line ("line shop")."""
    return ControlError(f"{where}: {REFUSALS[reason].format(**values)}", reason, values)


class Tap:
    """One listener of one call: a bounded queue the line's audio path offers periods to."""

    def __init__(self, periods: int):
        self.audio: "queue.Queue[bytes | None]" = queue.Queue(maxsize=max(1, periods))
        self.dropped = 0
        self.closed = threading.Event()

    def offer(self, pcm: bytes) -> None:
        """Take a period if there is room, else drop it and count it (never blocks)."""
        if self.closed.is_set():
            return
        try:
            self.audio.put_nowait(pcm)
        except queue.Full:
            self.dropped += 1

    def close(self, discard: bool = False) -> None:
        """No more audio is coming; with `discard`, what is queued is never sent either (a call
        declined: nothing of it may leave)."""
        self.closed.set()
        if discard:
            while True:
                try:
                    self.audio.get_nowait()
                except queue.Empty:
                    break

    def next(self, timeout: float) -> bytes | None:
        """The next period, or None when none came within `timeout` or the tap is closed."""
        if self.closed.is_set() and self.audio.empty():
            return None
        try:
            return self.audio.get(timeout=timeout)
        except queue.Empty:
            return None


def parse_request(line: bytes) -> dict:
    """A request as sent: {"command": pause|resume|listen, "line": name, "by": who, "call_id":
    optional}, or {"command": "reload", "by": who}. Raises ControlError naming what is wrong."""
    try:
        request = json.loads(line)
    except (UnicodeDecodeError, ValueError):
        raise ControlError("the request is not one line of JSON") from None
    if not isinstance(request, dict):
        raise ControlError("the request must be a JSON object")
    command = request.get("command")
    if command not in COMMANDS:
        raise ControlError(f"command: one of {', '.join(COMMANDS)}")
    if command != "reload" and (not isinstance(request.get("line"), str) or not request["line"]):
        raise ControlError("line: the name of a line")
    if not isinstance(request.get("by"), str) or not request["by"]:
        raise ControlError("by: who asks (for the log)")
    call_id = request.get("call_id")
    if call_id is not None and (not isinstance(call_id, int) or isinstance(call_id, bool)):
        raise ControlError("call_id: a call's number")
    return request


class SocketService(Service):
    """A UNIX stream socket served by this process: one thread per connection runs `handle`;
    accepting beats the heartbeat. The request framing is `read_line` and `send`."""

    beat_s = 1.0

    def __init__(self, name: str, path: Path, mode: int):
        super().__init__(name)
        self.path = Path(path)
        self.mode = mode            # who may connect: the owner, and the group with 0660
        self._server: socket.socket | None = None

    def bind(self) -> None:
        """Make the socket (replacing one a previous run left) with its permissions."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.unlink(missing_ok=True)
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        server.bind(str(self.path))
        os.chmod(self.path, self.mode)
        server.listen(8)
        server.settimeout(self.beat_s)
        self._server = server

    def start(self) -> None:
        """Bind, then serve in the background."""
        self.bind()
        super().start()

    def serve(self) -> None:
        while not self.stopping.is_set():
            self.beat()
            try:
                conn, _ = self._server.accept()
            except TimeoutError:
                continue
            except OSError:
                if self.stopping.is_set():
                    return
                raise
            threading.Thread(target=self.handle, args=(conn,), name=f"{self.name}-client", daemon=True).start()

    def handle(self, conn: socket.socket) -> None:
        """Answer one connection (and close it)."""
        raise NotImplementedError

    def stop(self, timeout: float | None = None) -> None:
        """Stop accepting and remove the socket (connections being answered finish on their own)."""
        super().stop(timeout)
        if self._server is not None:
            self._server.close()
            self.path.unlink(missing_ok=True)


class ControlService(SocketService):
    """Serves the control socket: one thread per connection, each writing its own answer (and a
    listener's audio)."""

    def __init__(self, folder: Path, lines: dict):
        super().__init__("control", Path(folder) / SOCKET_NAME, SOCKET_MODE)
        self.lines = lines          # by name: LineRecorder or SipTrunk (pause, resume, listen)

    def handle(self, conn: socket.socket) -> None:
        """Answer one request (and stream a listener's audio)."""
        with conn:
            conn.settimeout(REQUEST_S)
            try:
                request = parse_request(read_line(conn))
                if request["command"] == "reload":
                    # As `systemctl reload` does: for a web UI that runs as a user of its own.
                    log.info("configuration reload asked by %s", request["by"])
                    os.kill(os.getpid(), signal.SIGHUP)
                    send(conn, {"ok": True})
                    return
                line = self.lines.get(request["line"])
                if line is None:
                    raise ControlError(f"line: no line named {request['line']!r}")
                if request["command"] == "listen":
                    self._stream(conn, line, request)
                    return
                answer = line.screen_pause(request["command"] == "pause", request["by"], request.get("call_id"))
                send(conn, {"ok": True, **answer})
            except ControlError as exc:
                send(conn, exc.answer())
            except OSError:
                pass            # the client went away: nothing to tell it

    def _stream(self, conn: socket.socket, line, request: dict) -> None:
        """Answer a listen request, then send the call's audio until it ends."""
        tap, answer = line.listen(request["by"], request.get("call_id"), QUEUE_S)
        try:
            send(conn, {"ok": True, **answer})
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)
            conn.settimeout(None)
            while (pcm := tap.next(self.beat_s)) is not None or not tap.closed.is_set():
                if pcm:
                    conn.sendall(pcm)
        finally:
            tap.close(discard=True)
            if tap.dropped:
                log.info("line %s: a listener fell behind: %d periods not sent", request["line"], tap.dropped)


def read_line(conn: socket.socket, limit: int = MAX_REQUEST_BYTES) -> bytes:
    """One request line (without its newline), of at most `limit` bytes; ControlError when none
    comes in time or it is longer."""
    data = bytearray()
    while True:
        try:
            piece = conn.recv(min(limit + 1, 1 << 16))
        except TimeoutError:
            raise ControlError(f"no request within {REQUEST_S:g} s") from None
        data += piece
        if not piece or b"\n" in piece:
            break
        if len(data) > limit:
            raise ControlError(f"the request is longer than {limit} bytes")
    return bytes(data.split(b"\n", 1)[0])


def send(conn: socket.socket, answer: dict) -> None:
    """Send one answer as a JSON line."""
    conn.sendall(json.dumps(answer).encode() + b"\n")
