"""SIP messages (RFC 3261): parsed from what arrives, changed in place, written back out.

Parsing is lenient about what does not matter to a relay and strict about what does: a message
whose start line or headers cannot be read raises `SipError` (the relay drops it, having nothing to
answer to); a readable request that lacks a header a dialog needs, or whose CSeq or Content-Length
is wrong, raises `SipError` with the status to answer it with (400).
"""

import re
from dataclasses import dataclass, field

MAX_MESSAGE_BYTES = 65535
VERSION = "SIP/2.0"
BRANCH = "z9hG4bKcr"        # how every branch the appliance makes starts (RFC 3261's magic cookie, then ours)

COMPACT = {"v": "via", "f": "from", "t": "to", "i": "call-id", "m": "contact", "l": "content-length",
           "c": "content-type", "k": "supported", "x": "session-expires", "s": "subject",
           "e": "content-encoding", "o": "event", "r": "refer-to", "b": "referred-by", "u": "allow-events"}
SPELLING = {"call-id": "Call-ID", "cseq": "CSeq", "www-authenticate": "WWW-Authenticate",
            "p-asserted-identity": "P-Asserted-Identity", "min-se": "Min-SE", "rseq": "RSeq",
            "rack": "RAck", "mime-version": "MIME-Version"}
# Headers whose comma-separated values are kept as one entry each, so the top Via can be popped.
LISTS = frozenset({"via", "route", "record-route", "contact"})
REQUIRED = ("via", "from", "to", "call-id", "cseq")
TOKEN = re.compile(r"^[A-Za-z0-9.!%*_+`'~-]+$")

REASONS = {100: "Trying", 200: "OK", 400: "Bad Request", 403: "Forbidden", 404: "Not Found",
           405: "Method Not Allowed", 408: "Request Timeout", 480: "Temporarily Unavailable",
           481: "Call/Transaction Does Not Exist", 482: "Loop Detected", 483: "Too Many Hops",
           487: "Request Terminated", 488: "Not Acceptable Here", 500: "Server Internal Error",
           503: "Service Unavailable"}


class SipError(ValueError):
    """A message that cannot be relayed: `status` is the answer a request gets (None: drop it)."""

    def __init__(self, reason: str, status: int | None = 400):
        super().__init__(reason)
        self.status = status
        self.message: "Message | None" = None      # what could be read of it, to answer


def canonical(name: str) -> str:
    """A header name as it is written: `call-id` → `Call-ID`, `v` → `Via`."""
    name = COMPACT.get(name.lower(), name.lower())
    return SPELLING.get(name) or "-".join(part.capitalize() for part in name.split("-"))


def split_list(value: str) -> list[str]:
    """The comma-separated values of one header line (commas inside quotes or <> do not split)."""
    parts, start, quoted, angle = [], 0, False, False
    for index, char in enumerate(value):
        if char == '"' and (index == 0 or value[index - 1] != "\\"):
            quoted = not quoted
        elif not quoted and char in "<>":
            angle = char == "<"
        elif char == "," and not quoted and not angle:
            parts.append(value[start:index].strip())
            start = index + 1
    parts.append(value[start:].strip())
    return [p for p in parts if p]


@dataclass
class Message:
    """A request (`method`, `uri`) or a response (`status`, `reason`) with its headers and body."""

    method: str | None = None
    uri: str | None = None
    status: int | None = None
    reason: str = ""
    headers: list[list[str]] = field(default_factory=list)   # [lower-case name, value]
    body: bytes = b""

    @property
    def is_request(self) -> bool:
        """True for a request, False for a response."""
        return self.method is not None

    def get(self, name: str) -> str | None:
        """The first value of a header, or None."""
        name = name.lower()
        return next((value for key, value in self.headers if key == name), None)

    def get_all(self, name: str) -> list[str]:
        """All values of a header, in order."""
        name = name.lower()
        return [value for key, value in self.headers if key == name]

    def set(self, name: str, value: str) -> None:
        """Give a header one value: in place of the first, or appended."""
        name = name.lower()
        for index, (key, _) in enumerate(self.headers):
            if key == name:
                self.headers[index][1] = value
                self.headers[index + 1:] = [h for h in self.headers[index + 1:] if h[0] != name]
                return
        self.headers.append([name, value])

    def remove(self, name: str) -> None:
        """Remove every value of a header."""
        name = name.lower()
        self.headers = [h for h in self.headers if h[0] != name]

    def prepend(self, name: str, value: str) -> None:
        """Put a value before the others of its header (a Via on top)."""
        name = name.lower()
        index = next((i for i, (key, _) in enumerate(self.headers) if key == name), 0)
        self.headers.insert(index, [name, value])

    def pop_first(self, name: str) -> str | None:
        """Remove and return the first value of a header."""
        name = name.lower()
        for index, (key, value) in enumerate(self.headers):
            if key == name:
                del self.headers[index]
                return value
        return None

    def replace_all(self, name: str, values: list[str]) -> None:
        """Replace the values of a header, keeping its place."""
        name = name.lower()
        index = next((i for i, (key, _) in enumerate(self.headers) if key == name), len(self.headers))
        self.remove(name)
        self.headers[index:index] = [[name, v] for v in values]

    @property
    def call_id(self) -> str:
        """The Call-ID."""
        return self.get("call-id") or ""

    @property
    def cseq(self) -> tuple[int, str]:
        """The CSeq as (number, method)."""
        number, method = (self.get("cseq") or "0 ?").split(None, 1)
        return int(number), method.strip().upper()

    def to_bytes(self) -> bytes:
        """The message as it goes on the wire, with its Content-Length."""
        if self.is_request:
            lines = [f"{self.method} {self.uri} {VERSION}"]
        else:
            lines = [f"{VERSION} {self.status} {self.reason}"]
        lines += [f"{canonical(name)}: {value}" for name, value in self.headers if name != "content-length"]
        lines.append(f"Content-Length: {len(self.body)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + self.body


def parse(data: bytes) -> Message:
    """Read one message. Raises SipError (status None) when not even its frame can be read, or
    (status 400) when a request's essentials are missing or wrong."""
    if len(data) > MAX_MESSAGE_BYTES:
        raise SipError(f"message of {len(data)} bytes is too long", None)
    head, separator, body = data.partition(b"\r\n\r\n")
    if not separator:
        head, separator, body = data.partition(b"\n\n")
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        raise SipError("headers are not UTF-8", None) from None
    lines = text.replace("\r\n", "\n").split("\n")
    message = _start_line(lines[0].strip())
    for line in lines[1:]:
        if line[:1] in (" ", "\t") and message.headers:
            message.headers[-1][1] += " " + line.strip()          # a folded header line
            continue
        name, colon, value = line.partition(":")
        name = name.strip()
        if not colon or not TOKEN.match(name):
            raise SipError(f"unreadable header line {line[:40]!r}", None)
        key = COMPACT.get(name.lower(), name.lower())
        values = split_list(value) if key in LISTS else [value.strip()]
        message.headers += [[key, v] for v in values]
    try:
        length = message.get("content-length")
        if length is not None:
            if not length.isdigit():
                raise SipError(f"bad Content-Length {length!r}")
            if int(length) > len(body):
                raise SipError(f"Content-Length {length} but {len(body)} bytes of body")
            body = body[:int(length)]
        message.body = body
        check(message)
    except SipError as exc:
        exc.message = message
        raise
    return message


def _start_line(line: str) -> Message:
    parts = line.split(" ", 2)
    if len(parts) == 3 and parts[0] == VERSION:
        if not (parts[1].isdigit() and len(parts[1]) == 3 and 100 <= int(parts[1]) < 700):
            raise SipError(f"bad status line {line[:60]!r}", None)
        return Message(status=int(parts[1]), reason=parts[2])
    if len(parts) == 3 and parts[2] == VERSION and TOKEN.match(parts[0]) and ":" in parts[1]:
        return Message(method=parts[0].upper(), uri=parts[1])
    raise SipError(f"bad start line {line[:60]!r}", None)


def check(message: Message) -> None:
    """The headers every relayed message needs, readable: Via, From and To (with their URIs),
    Call-ID, a CSeq that matches the request's method, a numeric Max-Forwards."""
    if not message.get("via"):
        raise SipError("no Via header", None)
    try:
        Via.parse(message.get("via"))
    except SipError as exc:
        raise SipError(str(exc), None) from None
    for name in REQUIRED:
        if not message.get(name):
            raise SipError(f"no {canonical(name)} header")
    for name in ("from", "to"):
        NameAddr.parse(message.get(name))
    match = re.fullmatch(r"(\d{1,10})\s+([A-Za-z]+)", message.get("cseq").strip())
    if not match or int(match.group(1)) >= 2 ** 31:
        raise SipError(f"bad CSeq {message.get('cseq')[:40]!r}")
    if message.is_request and match.group(2).upper() != message.method:
        raise SipError(f"CSeq method {match.group(2)} does not match {message.method}")
    forwards = message.get("max-forwards")
    if forwards is not None and not forwards.isdigit():
        raise SipError(f"bad Max-Forwards {forwards!r}")


def params(text: str) -> dict[str, str | None]:
    """`;a=1;b` → {'a': '1', 'b': None} (names in lower case)."""
    out = {}
    for part in text.split(";"):
        name, equals, value = part.strip().partition("=")
        if name:
            out[name.lower()] = value.strip().strip('"') if equals else None
    return out


def render_params(values: dict[str, str | None]) -> str:
    """The inverse of `params`."""
    return "".join(f";{k}" if v is None else f";{k}={v}" for k, v in values.items())


@dataclass
class Uri:
    """A SIP URI: `sip:user@host:port;params`."""

    scheme: str
    user: str | None
    host: str
    port: int | None
    params: dict[str, str | None]
    headers: str = ""

    @classmethod
    def parse(cls, text: str) -> "Uri":
        """Read a sip:, sips: or tel: URI."""
        scheme, colon, rest = text.strip().partition(":")
        scheme = scheme.lower()
        if not colon or scheme not in ("sip", "sips", "tel"):
            raise SipError(f"not a SIP URI: {text[:60]!r}")
        rest, _, headers = rest.partition("?")
        if scheme == "tel":
            number, _, rest_params = rest.partition(";")
            return cls(scheme, number, "", None, params(rest_params), headers)
        userinfo, at, hostport = rest.rpartition("@")
        hostport, _, uri_params = hostport.partition(";")
        if hostport.startswith("["):
            host, _, port = hostport[1:].partition("]")
            port = port.lstrip(":")
        else:
            host, _, port = hostport.partition(":")
        if not host or (port and not (port.isdigit() and 0 < int(port) < 65536)):
            raise SipError(f"bad host or port in URI {text[:60]!r}")
        user = userinfo.partition(":")[0] if at else None
        return cls(scheme, user, host.lower(), int(port) if port else None, params(uri_params), headers)

    def __str__(self) -> str:
        if self.scheme == "tel":
            return f"tel:{self.user}{render_params(self.params)}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        user = f"{self.user}@" if self.user is not None else ""
        port = f":{self.port}" if self.port else ""
        headers = f"?{self.headers}" if self.headers else ""
        return f"{self.scheme}:{user}{host}{port}{render_params(self.params)}{headers}"


@dataclass
class NameAddr:
    """A From, To, Contact or P-Asserted-Identity value: display name, URI, header parameters."""

    display: str
    uri: Uri
    params: dict[str, str | None]

    @classmethod
    def parse(cls, text: str) -> "NameAddr":
        """Read `"Name" <sip:…>;tag=…` or `sip:…;tag=…`."""
        text = text.strip()
        if "<" in text:
            display, _, rest = text.partition("<")
            uri, closing, header_params = rest.partition(">")
            if not closing:
                raise SipError(f"unclosed <> in {text[:60]!r}")
            return cls(display.strip(), Uri.parse(uri), params(header_params))
        uri, _, header_params = text.partition(";")
        return cls("", Uri.parse(uri), params(header_params))

    @property
    def tag(self) -> str | None:
        """The tag parameter."""
        return self.params.get("tag")

    def __str__(self) -> str:
        display = f"{self.display} " if self.display else ""
        return f"{display}<{self.uri}>{render_params(self.params)}"


@dataclass
class Via:
    """One Via value: transport, sent-by host and port, parameters (branch, received, rport)."""

    transport: str
    host: str
    port: int | None
    params: dict[str, str | None]

    @classmethod
    def parse(cls, text: str) -> "Via":
        """Read `SIP/2.0/UDP host:port;branch=…`."""
        match = re.fullmatch(r"SIP\s*/\s*2\.0\s*/\s*([A-Za-z]+)\s+([^;\s]+)\s*(;.*)?", text.strip())
        if not match:
            raise SipError(f"bad Via {text[:60]!r}")
        hostport = match.group(2)
        if hostport.startswith("["):
            host, _, port = hostport[1:].partition("]")
            port = port.lstrip(":")
        else:
            host, _, port = hostport.partition(":")
        if not host or (port and not (port.isdigit() and 0 < int(port) < 65536)):
            raise SipError(f"bad sent-by in Via {text[:60]!r}")
        return cls(match.group(1).upper(), host, int(port) if port else None, params(match.group(3) or ""))

    @property
    def branch(self) -> str:
        """The branch parameter ('' when there is none)."""
        return self.params.get("branch") or ""

    def reply_address(self) -> tuple[str, int]:
        """Where a response to this hop goes (RFC 3581: received and rport win)."""
        host = self.params.get("received") or self.host
        rport = self.params.get("rport")
        port = int(rport) if rport and rport.isdigit() else (self.port or 5060)
        return host, port

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        port = f":{self.port}" if self.port else ""
        return f"SIP/2.0/{self.transport} {host}{port}{render_params(self.params)}"


def response(request: Message, status: int, reason: str | None = None, to_tag: str | None = None) -> Message:
    """A response to `request`: its Via, From, To (with `to_tag` if it has none), Call-ID, CSeq."""
    reply = Message(status=status, reason=reason or REASONS.get(status, "Error"))
    for name in ("via", "from", "to", "call-id", "cseq"):
        for value in request.get_all(name):
            reply.headers.append([name, value])
    if to_tag and request.get("to"):
        try:
            to = NameAddr.parse(request.get("to"))
        except SipError:
            return reply
        if to.tag is None:
            to.params["tag"] = to_tag
            reply.set("to", str(to))
    return reply
