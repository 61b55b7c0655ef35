"""SIP over UDP, TCP and TLS on one side of a trunk, on an asyncio loop's readers (no blocking call).

Each side listens on one address for UDP and TCP, and on a port of its own for TLS when it has a
certificate. A UDP datagram is one message; on TCP and TLS, messages are framed by their
Content-Length, and connections are reused in both directions (a response goes back on the
connection its request came on). TLS runs through an `ssl.SSLObject` over memory buffers, driven
by the same non-blocking readers and writers as TCP. Whatever arrives is handed to
`on_message(data, source, transport)` whole, unparsed.

A connection the appliance opens holds the messages given to it until it is up (connected, and for
TLS the handshake done). When it fails first (refused, unreachable, an untrusted certificate, no
answer in CONNECT_TIMEOUT_S), those messages are handed to `on_undelivered(messages, reason)`, so
that the relay can answer the requests among them at once instead of letting their senders wait.
"""

import logging
import os
import socket
import ssl
from dataclasses import dataclass

log = logging.getLogger(__name__)

MAX_TCP_BUFFER = 256 * 1024
MAX_HEAD = 16 * 1024
CONNECT_TIMEOUT_S = 5.0     # to connect and, for TLS, to finish the handshake


class TcpConnection:
    """One TCP connection: reassembles messages, queues what cannot be sent yet."""

    kind = "TCP"
    preposition = "to"          # as the log has always said it

    def __init__(self, transport: "SideTransport", sock: socket.socket, address: tuple[str, int],
                 connecting: bool = False):
        self.transport = transport
        self.sock = sock
        self.address = address
        self.inbox = bytearray()
        self.outbox = bytearray()
        self.connecting = connecting
        self.waiting: list[bytes] = []          # messages given before it was up, whole
        self.timeout = None
        loop = transport.loop
        loop.add_reader(sock.fileno(), self._readable)
        if connecting:
            loop.add_writer(sock.fileno(), self._writable)
            self.timeout = loop.call_later(CONNECT_TIMEOUT_S, self.fail, f"no answer in {CONNECT_TIMEOUT_S:g} s")

    @property
    def registry(self) -> dict:
        """The side's connections of this kind, by peer address."""
        return self.transport.connections

    @property
    def up(self) -> bool:
        """Whether messages go through it now (connected; TLS: the handshake done)."""
        return not self.connecting

    def send(self, data: bytes) -> None:
        """Send a message, now or as soon as the socket takes it."""
        if not self.up:
            self.waiting.append(data)
        self._write(data)

    def _write(self, data: bytes) -> None:
        self.outbox += data
        if not self.connecting:
            self._writable()

    def _writable(self) -> None:
        loop = self.transport.loop
        if self.connecting:
            error = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if error:
                self.fail(os.strerror(error))
                return
            self.connecting = False
            self._connected()
        try:
            sent = self.sock.send(self.outbox) if self.outbox else 0
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError as exc:
            self.fail(exc.strerror or str(exc))
            return
        del self.outbox[:sent]
        loop.remove_writer(self.sock.fileno())
        if self.outbox:
            loop.add_writer(self.sock.fileno(), self._writable)

    def _readable(self) -> None:
        try:
            data = self.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            data, reason = b"", exc.strerror or str(exc)
        else:
            reason = "closed by the peer"
        if not data:
            if self.up:
                self.close()            # the peer's to close: nothing was waiting for it
            else:
                self.fail(reason)
            return
        self._received(data)

    def _connected(self) -> None:
        """The connection to the peer is up."""
        self._became_up()

    def _became_up(self) -> None:
        if self.timeout is not None:
            self.timeout.cancel()
        self.waiting.clear()

    def fail(self, reason: str) -> None:
        """The connection failed: log why, close it, and hand back the messages it never carried."""
        log.warning("SIP over %s %s %s:%s failed: %s", self.kind, self.preposition, *self.address, reason)
        lost, self.waiting = self.waiting, []
        self.close()
        if lost:
            host, port = self.address
            self.transport.undelivered(lost, f"SIP over {self.kind} to {host}:{port} failed: {reason}")

    def _received(self, data: bytes) -> None:
        """Bytes of the stream: hand on the messages they complete."""
        self.inbox += data
        while (message := self._next_message()) is not None:
            self.transport.on_message(message, self.address, self.kind)
        if len(self.inbox) > MAX_TCP_BUFFER:
            log.warning("SIP over %s from %s:%s: no message end in %d bytes; closing", self.kind, *self.address,
                        len(self.inbox))
            self.close()

    def _next_message(self) -> bytes | None:
        while self.inbox[:2] == b"\r\n":          # keep-alives (RFC 5626) between messages
            del self.inbox[:2]
        end = self.inbox.find(b"\r\n\r\n")
        if end < 0:
            if len(self.inbox) > MAX_HEAD:
                self.inbox.clear()                  # not SIP: drop it, keep the connection's peer
            return None
        length = 0
        for line in bytes(self.inbox[:end]).split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() in (b"content-length", b"l"):
                value = value.strip()
                length = int(value) if value.isdigit() else 0
        total = end + 4 + length
        if len(self.inbox) < total:
            return None
        message = bytes(self.inbox[:total])
        del self.inbox[:total]
        return message

    def close(self) -> None:
        """Close the connection and forget it."""
        if self.timeout is not None:
            self.timeout.cancel()
        loop = self.transport.loop
        loop.remove_reader(self.sock.fileno())
        loop.remove_writer(self.sock.fileno())
        self.sock.close()
        if self.registry.get(self.address) is self:
            del self.registry[self.address]


@dataclass
class TlsSettings:
    """A side's TLS: its port, the context it accepts connections with (its certificate) and the
    one it connects with (the trust anchors, checking the peer's name)."""

    port: int
    server: ssl.SSLContext | None
    client: ssl.SSLContext


def tls_settings(config, port: int) -> TlsSettings:
    """A side's TLS from its configuration (`SipSideConfig`): it accepts TLS on `port` when it has a
    certificate; it connects with TLS checking the peer's certificate against `tls_ca` (else the
    system's trust store) and its name, unless `tls_verify` is off."""
    client = ssl.create_default_context(cafile=config.tls_ca)
    if not config.tls_verify:
        client.check_hostname, client.verify_mode = False, ssl.CERT_NONE
    server = None
    if config.tls_certificate is not None:
        client.load_cert_chain(config.tls_certificate, config.tls_key)     # for a peer that asks for one
        server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        server.load_cert_chain(config.tls_certificate, config.tls_key)
        server.verify_mode = ssl.CERT_NONE          # peers are told apart by their address, not a certificate
    return TlsSettings(port, server, client)


class TlsConnection(TcpConnection):
    """SIP over TLS: a TCP connection whose bytes go through an SSLObject."""

    kind = "TLS"
    preposition = "with"

    def __init__(self, transport: "SideTransport", sock: socket.socket, address: tuple[str, int],
                 context: ssl.SSLContext, server_side: bool, hostname: str | None = None, connecting: bool = False):
        self.encrypted_in, self.encrypted_out = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = context.wrap_bio(self.encrypted_in, self.encrypted_out, server_side=server_side,
                                    server_hostname=None if server_side else hostname)
        self.handshaken = False
        self.plain_out = bytearray()            # messages waiting for the handshake
        super().__init__(transport, sock, address, connecting)

    @property
    def registry(self) -> dict:
        """The side's TLS connections, by peer address."""
        return self.transport.tls_connections

    @property
    def up(self) -> bool:
        """Whether the handshake is done."""
        return self.handshaken

    def send(self, data: bytes) -> None:
        """Send a message, once the handshake is done."""
        if not self.up:
            self.waiting.append(data)
        self.plain_out += data
        self._pump()

    def _connected(self) -> None:
        self._pump()

    def _received(self, data: bytes) -> None:
        self.encrypted_in.write(data)
        if not self._pump():
            return
        plain = bytearray()
        while True:
            try:
                chunk = self.tls.read(65536)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLError as exc:
                self._failed(exc)
                return
            if not chunk:
                break
            plain += chunk
        if plain:
            super()._received(bytes(plain))

    def _pump(self) -> bool:
        """Move the handshake on, encrypt what waits, send what TLS made; False once it failed."""
        try:
            if not self.handshaken:
                self.tls.do_handshake()
                self.handshaken = True
                self._became_up()
            if self.plain_out:
                self.tls.write(bytes(self.plain_out))
                self.plain_out.clear()
        except ssl.SSLWantReadError:
            pass
        except ssl.SSLError as exc:
            self._flush()               # the alert, so the other end knows why
            self._failed(exc)
            return False
        self._flush()
        return True

    def _flush(self) -> None:
        if (encrypted := self.encrypted_out.read()) and self.sock.fileno() != -1:
            self._write(encrypted)

    def _failed(self, exc: ssl.SSLError) -> None:
        self.fail(getattr(exc, "verify_message", None) or str(exc))


class SideTransport:
    """SIP on one side's listen address, over UDP and TCP."""

    def __init__(self, loop, host: str, port: int, on_message, tls: TlsSettings | None = None,
                 on_undelivered=lambda messages, reason: None):
        self.loop = loop
        self.host, self.port = host, port
        self.on_message = on_message
        self.on_undelivered = on_undelivered
        self.tls = tls
        self.names: dict[tuple[str, int], str] = {}     # the name a peer's certificate must have, by address
        self.connections: dict[tuple[str, int], TcpConnection] = {}
        self.tls_connections: dict[tuple[str, int], TlsConnection] = {}
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.udp = socket.socket(family, socket.SOCK_DGRAM)
        self.tcp = socket.socket(family, socket.SOCK_STREAM)
        self.tls_listener = socket.socket(family, socket.SOCK_STREAM) if tls and tls.server else None
        listeners = [(self.tcp, port)] + ([(self.tls_listener, tls.port)] if self.tls_listener else [])
        try:
            self.udp.bind((host, port))
            for sock, at in listeners:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind((host, at))
        except OSError:
            for sock in (self.udp, self.tcp, self.tls_listener):
                if sock is not None:
                    sock.close()
            raise
        for sock, _ in listeners:
            sock.listen(64)
            sock.setblocking(False)
        self.udp.setblocking(False)

    def start(self) -> None:
        """Start receiving (on the loop's thread)."""
        self.loop.add_reader(self.udp.fileno(), self._udp_readable)
        self.loop.add_reader(self.tcp.fileno(), self._accept)
        if self.tls_listener is not None:
            self.loop.add_reader(self.tls_listener.fileno(), self._accept_tls)

    def _udp_readable(self) -> None:
        for _ in range(64):
            try:
                data, source = self.udp.recvfrom(65536)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                continue
            self.on_message(data, source[:2], "UDP")

    def _accept(self, tls: bool = False) -> None:
        try:
            sock, address = (self.tls_listener if tls else self.tcp).accept()
        except (BlockingIOError, InterruptedError, OSError):
            return
        sock.setblocking(False)
        address = address[:2]
        registry = self.tls_connections if tls else self.connections
        old = registry.pop(address, None)
        if old is not None:
            old.close()
        registry[address] = TlsConnection(self, sock, address, self.tls.server, server_side=True) if tls \
            else TcpConnection(self, sock, address)

    def _accept_tls(self) -> None:
        self._accept(tls=True)

    def undelivered(self, messages: list[bytes], reason: str) -> None:
        """Hand messages that could not be sent to `on_undelivered`, after what runs now."""
        self.loop.call_soon(self.on_undelivered, messages, reason)

    def send(self, data: bytes, address: tuple[str, int], transport: str, hostname: str | None = None) -> None:
        """Send a message to `address` over `transport` (UDP, TCP or TLS; a connection is reused).
        A new TLS connection checks that the peer's certificate names `hostname` (else its address)."""
        if transport not in ("TCP", "TLS"):
            try:
                self.udp.sendto(data, address)
            except OSError as exc:
                log.warning("cannot send SIP to %s:%s: %s", *address, exc)
            return
        registry = self.tls_connections if transport == "TLS" else self.connections
        connection = registry.get(address)
        if connection is None:
            if transport == "TLS" and self.tls is None:
                log.warning("cannot send SIP over TLS to %s:%s: TLS is not set up on this side", *address)
                self.undelivered([data], f"SIP over TLS to {address[0]}:{address[1]}: TLS is not set up on this side")
                return
            sock = socket.socket(self.tcp.family, socket.SOCK_STREAM)
            sock.setblocking(False)
            try:
                sock.bind((self.host, 0))
                sock.connect(address)
            except BlockingIOError:
                pass
            except OSError as exc:
                log.warning("cannot connect to %s:%s for SIP over %s: %s", *address, transport, exc)
                sock.close()
                self.undelivered([data], f"SIP over {transport} to {address[0]}:{address[1]} failed: "
                                         f"{exc.strerror or exc}")
                return
            if transport == "TLS":
                connection = TlsConnection(self, sock, address, self.tls.client, server_side=False,
                                           hostname=hostname or self.names.get(address) or address[0], connecting=True)
            else:
                connection = TcpConnection(self, sock, address, connecting=True)
            registry[address] = connection
        connection.send(data)

    def close(self) -> None:
        """Stop listening and close every connection."""
        for connection in [*self.connections.values(), *self.tls_connections.values()]:
            connection.close()
        for sock in (self.udp, self.tcp, self.tls_listener):
            if sock is not None:
                self.loop.remove_reader(sock.fileno())
                sock.close()
