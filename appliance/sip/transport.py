"""SIP over UDP and TCP on one side of a trunk, on an asyncio loop's readers (no blocking call).

Each side listens on one address for both transports. A UDP datagram is one message; on TCP,
messages are framed by their Content-Length, and connections are reused in both directions
(a response goes back on the connection its request came on). Whatever arrives is handed to
`on_message(data, source, transport)` whole, unparsed.
"""

import errno
import logging
import socket

log = logging.getLogger(__name__)

MAX_TCP_BUFFER = 256 * 1024
MAX_HEAD = 16 * 1024


class TcpConnection:
    """One TCP connection: reassembles messages, queues what cannot be sent yet."""

    def __init__(self, transport: "SideTransport", sock: socket.socket, address: tuple[str, int],
                 connecting: bool = False):
        self.transport = transport
        self.sock = sock
        self.address = address
        self.inbox = bytearray()
        self.outbox = bytearray()
        self.connecting = connecting
        loop = transport.loop
        loop.add_reader(sock.fileno(), self._readable)
        if connecting:
            loop.add_writer(sock.fileno(), self._writable)

    def send(self, data: bytes) -> None:
        """Send a message, now or as soon as the socket takes it."""
        self.outbox += data
        if not self.connecting:
            self._writable()

    def _writable(self) -> None:
        loop = self.transport.loop
        if self.connecting:
            error = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if error:
                log.warning("SIP over TCP to %s:%s failed: %s", *self.address, errno.errorcode.get(error, error))
                self.close()
                return
            self.connecting = False
        try:
            sent = self.sock.send(self.outbox) if self.outbox else 0
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError as exc:
            log.warning("SIP over TCP to %s:%s: %s", *self.address, exc)
            self.close()
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
        except OSError:
            data = b""
        if not data:
            self.close()
            return
        self.inbox += data
        while (message := self._next_message()) is not None:
            self.transport.on_message(message, self.address, "TCP")
        if len(self.inbox) > MAX_TCP_BUFFER:
            log.warning("SIP over TCP from %s:%s: no message end in %d bytes; closing", *self.address, len(self.inbox))
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
        loop = self.transport.loop
        loop.remove_reader(self.sock.fileno())
        loop.remove_writer(self.sock.fileno())
        self.sock.close()
        if self.transport.connections.get(self.address) is self:
            del self.transport.connections[self.address]


class SideTransport:
    """SIP on one side's listen address, over UDP and TCP."""

    def __init__(self, loop, host: str, port: int, on_message):
        self.loop = loop
        self.host, self.port = host, port
        self.on_message = on_message
        self.connections: dict[tuple[str, int], TcpConnection] = {}
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.udp = socket.socket(family, socket.SOCK_DGRAM)
        self.tcp = socket.socket(family, socket.SOCK_STREAM)
        self.tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self.udp.bind((host, port))
            self.tcp.bind((host, port))
        except OSError:
            self.udp.close()
            self.tcp.close()
            raise
        self.tcp.listen(64)
        self.udp.setblocking(False)
        self.tcp.setblocking(False)

    def start(self) -> None:
        """Start receiving (on the loop's thread)."""
        self.loop.add_reader(self.udp.fileno(), self._udp_readable)
        self.loop.add_reader(self.tcp.fileno(), self._accept)

    def _udp_readable(self) -> None:
        for _ in range(64):
            try:
                data, source = self.udp.recvfrom(65536)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                continue
            self.on_message(data, source[:2], "UDP")

    def _accept(self) -> None:
        try:
            sock, address = self.tcp.accept()
        except (BlockingIOError, InterruptedError, OSError):
            return
        sock.setblocking(False)
        old = self.connections.pop(address[:2], None)
        if old is not None:
            old.close()
        self.connections[address[:2]] = TcpConnection(self, sock, address[:2])

    def send(self, data: bytes, address: tuple[str, int], transport: str) -> None:
        """Send a message to `address` over `transport` (UDP or TCP; TCP reuses a connection)."""
        if transport != "TCP":
            try:
                self.udp.sendto(data, address)
            except OSError as exc:
                log.warning("cannot send SIP to %s:%s: %s", *address, exc)
            return
        connection = self.connections.get(address)
        if connection is None:
            sock = socket.socket(self.tcp.family, socket.SOCK_STREAM)
            sock.setblocking(False)
            try:
                sock.bind((self.host, 0))
                sock.connect(address)
            except BlockingIOError:
                pass
            except OSError as exc:
                log.warning("cannot connect to %s:%s for SIP over TCP: %s", *address, exc)
                sock.close()
                return
            connection = self.connections[address] = TcpConnection(self, sock, address, connecting=True)
        connection.send(data)

    def close(self) -> None:
        """Stop listening and close every connection."""
        for connection in list(self.connections.values()):
            connection.close()
        for sock in (self.udp, self.tcp):
            self.loop.remove_reader(sock.fileno())
            sock.close()
