"""The NAT router's public address, asked of a STUN server (RFC 5389 Binding requests, through
aioice's STUN messages and client transactions), for a side with `stun_server` in place of a
fixed `external` address.

The request goes out from the side's own address, so the answer is the address the router's
masquerading gives the appliance's traffic. Only the address is taken: the port the peer reaches
stays the side's listen port, which the router forwards (as with an `external` without a port).
It is asked at start-up and every REFRESH_S (a DSL line may get a new address on reconnecting), on
the relay's loop without blocking it; until the first answer the side names its own address, and a
failed request keeps the last answer and tries again RETRY_S later.
"""

import asyncio
import logging
import socket
import time

from aioice import stun

from appliance.config import join_host_port

log = logging.getLogger(__name__)

STUN_PORT = 3478
REFRESH_S = 300.0
RETRY_S = 30.0
RETRANSMISSIONS = 2         # sent at 0, 0.5 and 1.5 s; given up at 3.5 s


class _Client(asyncio.DatagramProtocol):
    """One Binding transaction on a socket of its own (aioice's `TransactionSender`)."""

    def __init__(self):
        self.transport = None
        self.transaction: stun.Transaction | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def send_stun(self, message: stun.Message, addr: tuple[str, int]) -> None:
        """Send a STUN message (the transaction's request, and again)."""
        self.transport.sendto(bytes(message), addr)

    def datagram_received(self, data: bytes, addr) -> None:
        try:
            message = stun.parse_message(data)
        except ValueError:
            return
        if self.transaction is not None:
            self.transaction.response_received(message, addr[:2])


class PublicAddress:
    """What a STUN server at `server` (host, port or None) says the side at `local_host` is, and when to ask again."""

    def __init__(self, server: tuple[str, int | None], local_host: str, trunk: str):
        self.server = (server[0], server[1] or STUN_PORT)
        self.local_host, self.trunk = local_host, trunk
        self.address: str | None = None
        self.expires = 0.0                  # monotonic: when to ask again
        self.looking = False
        self.error: str | None = None

    def due(self, now: float) -> bool:
        """Whether to ask now."""
        return not self.looking and now >= self.expires

    async def refresh(self) -> None:
        """Ask the server; on failure keep what was known and ask again later."""
        self.looking = True
        where = join_host_port(*self.server)
        try:
            address = await self._ask()
        except (OSError, ValueError, KeyError, stun.TransactionError) as exc:
            self.error = f"STUN server {where} did not tell the public address: {exc or type(exc).__name__}"
            log.warning("sip trunk %s: %s", self.trunk, self.error)
            self.expires = time.monotonic() + RETRY_S
        else:
            if address != self.address:
                log.info("sip trunk %s: the public address of %s is %s (STUN server %s)", self.trunk,
                         self.local_host, address, where)
            self.address, self.error = address, None
            self.expires = time.monotonic() + REFRESH_S
        finally:
            self.looking = False

    async def _ask(self) -> str:
        loop = asyncio.get_running_loop()
        family = socket.AF_INET6 if ":" in self.local_host else socket.AF_INET
        server = (await loop.getaddrinfo(*self.server, family=family, type=socket.SOCK_DGRAM))[0][4]
        transport, client = await loop.create_datagram_endpoint(_Client, local_addr=(self.local_host, 0), family=family)
        try:
            request = stun.Message(message_method=stun.Method.BINDING, message_class=stun.Class.REQUEST)
            client.transaction = stun.Transaction(request, server[:2], client, retransmissions=RETRANSMISSIONS)
            response, _ = await client.transaction.run()
        finally:
            transport.close()
        mapped = response.attributes.get("XOR-MAPPED-ADDRESS") or response.attributes["MAPPED-ADDRESS"]
        return mapped[0]
