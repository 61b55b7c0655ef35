"""Where a peer named by its host name is, as RFC 3263 says to find a SIP server, looked up on the
relay's event loop without blocking it (dnspython's asyncio resolver).

A name without a port is looked up as NAPTR records (which transport, which SRV name), then SRV
(which hosts and ports, by priority and weight), then A or AAAA (the address family of the side's
own address); a name with a port, or without NAPTR and SRV records, straight as A/AAAA on that port
(5060 by default, 5061 for TLS). Each answer is kept for its records' TTL and looked up again when it runs out,
keeping the old targets until the new answer comes (or when the lookup fails). The next target of
an SRV set is tried when the current one stops answering the keep-alive pings.
"""

import asyncio
import logging
import random
import socket
import time
from dataclasses import dataclass

import dns.asyncresolver
import dns.exception
import dns.resolver

from appliance.config import is_ip_address

log = logging.getLogger(__name__)

NAPTR_SERVICES = {"SIP+D2U": "UDP", "SIP+D2T": "TCP", "SIPS+D2T": "TLS"}    # what the relay speaks
SRV_PREFIX = {"UDP": "_sip._udp", "TCP": "_sip._tcp", "TLS": "_sips._tcp"}
DEFAULT_PORTS = {"UDP": 5060, "TCP": 5060, "TLS": 5061}
MIN_TTL_S = 10.0            # not more often than this, whatever the zone says
MAX_TTL_S = 86400.0
RETRY_S = 30.0              # after a failed lookup
LOOKUP_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class Target:
    """One place to send a peer's requests."""

    address: tuple[str, int]
    transport: str                  # "UDP", "TCP" or "TLS"


class Locator:
    """The targets of one configured peer (`host`, `port` or None, `transport` or None: as DNS says)."""

    def __init__(self, host: str, port: int | None, transport: str | None, family: int,
                 nameservers: list[tuple[str, int | None]] | None = None):
        self.host, self.port, self.transport, self.family = host, port, transport, family
        self.targets: list[Target] = []
        self.expires = 0.0                  # monotonic: when to look up again
        self.looking = False
        self.error: str | None = None       # why the last lookup failed
        if is_ip_address(host):
            self.targets = [Target((host, port or DEFAULT_PORTS[transport or "UDP"]), transport or "UDP")]
            self.expires = float("inf")
        self._resolver = dns.asyncresolver.Resolver(configure=not nameservers)
        if nameservers:
            self._resolver.nameservers = [address for address, _ in nameservers]
            self._resolver.port = nameservers[0][1] or 53
        self._resolver.lifetime = LOOKUP_TIMEOUT_S

    @property
    def target(self) -> Target | None:
        """Where to send now (None until a lookup answered)."""
        return self.targets[0] if self.targets else None

    def due(self, now: float) -> bool:
        """Whether a lookup should start now."""
        return not self.looking and now >= self.expires

    def failed(self) -> None:
        """The current target stopped answering: the next one of the set goes first."""
        if len(self.targets) > 1:
            self.targets.append(self.targets.pop(0))
            log.warning("sip peer %s: trying %s:%s next", self.host, *self.targets[0].address)

    async def refresh(self) -> None:
        """Look the peer up again; on failure keep what was known and try again later."""
        self.looking = True
        try:
            targets, ttl = await self._lookup()
        except (dns.exception.DNSException, OSError) as exc:
            self.error = f"{self.host} does not resolve: {exc}"
            log.warning("sip peer %s", self.error)
            self.expires = time.monotonic() + RETRY_S
        else:
            if [t.address for t in targets] != [t.address for t in self.targets]:
                log.info("sip peer %s is at %s", self.host,
                         ", ".join(f"{t.transport} {t.address[0]}:{t.address[1]}" for t in targets))
            self.targets, self.error = targets, None
            self.expires = time.monotonic() + min(max(ttl, MIN_TTL_S), MAX_TTL_S)
        finally:
            self.looking = False

    async def _lookup(self) -> tuple[list[Target], float]:
        ttls = []
        if self.port is None:
            services = await self._services(ttls)
            for transport, srv_name in services:
                targets = await self._srv(srv_name, transport, ttls)
                if targets:
                    return targets, min(ttls, default=MAX_TTL_S)
        addresses = await self._addresses(self.host, ttls)
        if not addresses:
            raise dns.resolver.NoAnswer(f"no {self._kind} record")
        transport = self.transport or "UDP"
        port = self.port or DEFAULT_PORTS[transport]
        return [Target((address, port), transport) for address in addresses], min(ttls, default=MAX_TTL_S)

    async def _services(self, ttls: list[float]) -> list[tuple[str, str]]:
        """(transport, SRV name) to try, from the NAPTR records or else the usual SRV names."""
        wanted = [self.transport] if self.transport else list(SRV_PREFIX)
        usual = [(t, f"{SRV_PREFIX[t]}.{self.host}") for t in ([self.transport] if self.transport else ["UDP", "TCP"])]
        try:
            answer = await self._resolver.resolve(self.host, "NAPTR")
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return usual
        ttls.append(answer.rrset.ttl)
        records = sorted(answer, key=lambda r: (r.order, r.preference))
        found = [(NAPTR_SERVICES[r.service.decode().upper()], r.replacement.to_text(omit_final_dot=True))
                 for r in records if r.flags.decode().lower() == "s"
                 and NAPTR_SERVICES.get(r.service.decode().upper()) in wanted]
        return found or usual

    async def _srv(self, name: str, transport: str, ttls: list[float]) -> list[Target]:
        try:
            answer = await self._resolver.resolve(name, "SRV")
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return []
        ttls.append(answer.rrset.ttl)
        targets = []
        for record in ordered_srv(list(answer)):
            host = record.target.to_text(omit_final_dot=True)
            for address in await self._addresses(host, ttls):
                targets.append(Target((address, record.port), transport))
        return targets

    @property
    def _kind(self) -> str:
        return "AAAA" if self.family == socket.AF_INET6 else "A"

    async def _addresses(self, host: str, ttls: list[float]) -> list[str]:
        if is_ip_address(host):
            return [host]
        try:
            answer = await self._resolver.resolve(host, self._kind)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return []
        ttls.append(answer.rrset.ttl)
        return [record.address for record in answer]


def ordered_srv(records: list) -> list:
    """SRV records in the order to try them (RFC 2782): by priority, and within one priority at
    random, weighted by their weight."""
    ordered = []
    for priority in sorted({r.priority for r in records}):
        group = [r for r in records if r.priority == priority]
        while group:
            total = sum(r.weight for r in group)
            pick = random.uniform(0, total) if total else 0
            for record in group:
                pick -= record.weight
                if pick <= 0:
                    break
            group.remove(record)
            ordered.append(record)
    return ordered


async def locate_all(locators: list[Locator]) -> None:
    """Look every locator up once, together (at start-up)."""
    await asyncio.gather(*(locator.refresh() for locator in locators if locator.due(time.monotonic())))
