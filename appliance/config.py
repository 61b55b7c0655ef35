"""The appliance's configuration: `/etc/callrec/appliance.toml`, validated at load.

Every key is typed; an unknown, missing or wrongly typed key fails with the file, the key and what
was expected, so the technician can fix it without reading code.
"""

import logging
import os
import re
import tomllib
from importlib import resources
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator, model_validator

from appliance.errors import ConfigError
from appliance.selection import parse_window

log = logging.getLogger(__name__)

DEFAULT_CONFIG = Path("/etc/callrec/appliance.toml")
DEFAULT_DATA_DIR = Path("/var/lib/callrec")

Level = Literal["low", "high"]
# Where a line's caller ID comes from: its modem, or its audio (DTMF CLIP, or FSK in V.23 or Bell 202 tones).
CallerIdSource = Literal["modem", "dtmf", "fsk-v23", "fsk-bell202"]
# What the called party of an outgoing call is told: the notice once it answers, a short tone every
# `beep_interval_s`, or nothing (the shop's documented choice, shown on the status page).
OutgoingPolicy = Literal["announce", "beep", "off"]
EMAIL = r"^[^@\s<>]+@[^@\s<>]+$"


# A path given in TOML as a string (strict models take no str for a Path otherwise).
PathSetting = Annotated[Path, BeforeValidator(lambda value: Path(value) if isinstance(value, str) else value)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class RecorderConfig(_Strict):
    """Settings shared by all lines: the store, the audio format and the hook timing."""

    data_dir: PathSetting = DEFAULT_DATA_DIR
    sample_rate: Literal[8000, 12000, 16000, 24000, 48000] = 8000   # the rates Opus encodes
    # 40 ms: half the wake-ups of 20 ms (the capture thread's CPU around the clock) and a longer
    # buffer against overruns; keys, pauses and offsets are placed by sample, not by period.
    period_ms: int = Field(40, ge=5, le=100)
    preroll_s: float = Field(2.0, ge=0, le=30)
    flush_interval_s: float = Field(1.0, ge=0.1, le=2.0)
    format: Literal["opus", "flac", "wav"] = "opus"
    opus_bitrate: int = Field(16000, ge=6000, le=128000)
    debounce_ms: int = Field(40, ge=0, le=500)
    flash_max_ms: int = Field(700, ge=50, le=5000)
    ring_gap_s: float = Field(6.0, ge=0.5, le=30)
    dialling_window_s: float = Field(20.0, ge=0, le=120)    # digits of an outgoing call read as its number
    fault_led_pin: int | str | None = None                  # blinks 1: no sound card, 2: storage, 3: modem
    country_code: str = Field("32", pattern=r"^[1-9][0-9]{0,2}$")   # for national numbers in contacts
    runtime_dir: PathSetting | None = None     # live state for the web UI; default <data_dir>/run, /run/callrec on a Pi
    listeners_per_line: int = Field(2, ge=0, le=10)     # who may hear a line's call live at once (0: no one)

    @property
    def live_dir(self) -> Path:
        """Where the recorder publishes its live state (tmpfs on the appliance: it changes twice a second)."""
        return self.runtime_dir if self.runtime_dir is not None else self.data_dir / "run"


class CallRulesConfig(_Strict):
    """The rules of a line's calls, with the same names and values for analog lines and SIP trunks:
    the notice and where the recording starts, the purpose, the caller's opt-out, the pause, the
    staff's private calls."""

    notice: PathSetting
    notice_incoming: bool = True                # incoming calls hear the notice when answered
    record_from: Literal["start", "notice_end"] = "start"        # or only once the notice has played
    purpose: str = Field("training", min_length=1)
    pause_code: str | None = Field(None, pattern=r"^[0-9*#]{1,4}$")   # DTMF keys that pause / resume
    pause_max_s: float = Field(300.0, ge=1, le=3600)         # a pause left on resumes by itself
    optout_digit: str | None = Field(None, pattern=r"^[0-9*#]$")
    optout_window_s: float = Field(15.0, ge=1, le=120)     # after the notice ends
    keep_declined_number: bool = False
    record: bool = True                         # false: no call of this line is ever recorded
    private_code: str | None = Field(None, pattern=r"^[0-9*#]{1,4}$")  # first keys: a private call
    private_window_s: float = Field(15.0, ge=1, le=120)     # from the start, for the private code
    schedule: list[str] = []                    # when calls are recorded, e.g. "mon-fri 09:00-12:00"; []: always
    record_one_in: int = Field(1, ge=1, le=100)    # one call in N is recorded (see appliance.selection)
    # -- outgoing calls: how the called party is told ----------------------------------------------
    outgoing: OutgoingPolicy = "announce"       # the notice at the answer, a periodic beep, or nothing
    answer_fallback_s: float = Field(30.0, ge=3, le=120)    # analog: no answer heard this long: act anyway
    beep_interval_s: float = Field(15.0, ge=5, le=120)
    beep_hz: int = Field(1400, ge=300, le=3400)
    beep_ms: int = Field(300, ge=200, le=500)
    beep_level_dbfs: float = Field(-18.0, ge=-40, le=-6)
    # What the notice says, word for word: the settings check it names the opt-out key.
    notice_text: str | None = Field(None, min_length=1, max_length=2000)

    @field_validator("schedule")
    @classmethod
    def _schedule_entries(cls, entries):
        for entry in entries:
            parse_window(entry)
        return entries

    @model_validator(mode="before")
    @classmethod
    def _old_names(cls, raw):
        """Keys as earlier versions wrote them still load, with a warning that says the new spelling."""
        if not isinstance(raw, dict):
            return raw
        raw = dict(raw)
        name = raw.get("name", "?")
        if raw.get("record_from") in ("preroll", "answer"):
            log.warning("%s: record_from = %r is now written record_from = \"start\"", name, raw["record_from"])
            raw["record_from"] = "start"
        return _old_outgoing(raw, name)


def _old_outgoing(raw: dict, name: str) -> dict:
    """`notice_outgoing` and `notice_outgoing_after_s` of earlier versions, as `outgoing`: true (or a
    delay alone) is "announce", the delay becoming the fallback of the answer detection; false is
    "off"."""
    old = {key: raw.pop(key) for key in ("notice_outgoing", "notice_outgoing_after_s") if key in raw}
    if not old:
        return raw
    if "outgoing" in raw:
        raise ValueError(f"{' and '.join(old)} and outgoing = {raw['outgoing']!r} say the same thing: keep "
                         "outgoing only")
    flag, delay = old.get("notice_outgoing", True), old.get("notice_outgoing_after_s")
    if not isinstance(flag, bool):
        raise ValueError(f"notice_outgoing: expected true or false, got {flag!r} (it is now written "
                         'outgoing = "announce" or "off")')
    if delay is not None and (not isinstance(delay, (int, float)) or isinstance(delay, bool)):
        raise ValueError(f"notice_outgoing_after_s: expected a number of seconds, got {delay!r}")
    raw["outgoing"] = "announce" if flag else "off"
    if flag and delay:
        raw["answer_fallback_s"] = float(delay)
    written = " with ".join(f"{key} = {str(value).lower() if isinstance(value, bool) else value}"
                            for key, value in old.items())
    log.warning('%s: %s is now written outgoing = "%s"%s', name, written, raw["outgoing"],
                f" and answer_fallback_s = {float(delay)}" if flag and delay else "")
    return raw


class LineConfig(CallRulesConfig):
    """One analog line: its hook (and ring) inputs, its sound card and modem, its buttons and LED,
    and its calls' rules."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,31}$")
    hook_pin: int | str
    hook_active: Level
    ring_pin: int | str | None = None
    ring_active: Level = "low"
    capture: str = Field(min_length=1)
    playback: str = Field(min_length=1)
    modem: str | None = Field(None, min_length=1)           # serial device of a caller-ID modem
    modem_commands: list[Annotated[str, Field(pattern=r"^AT\S+$")]] = Field(
        ["AT+VCID=1", "AT#CID=1", "AT%CCID=1", "AT+CLIP=1"], min_length=1)
    caller_id: CallerIdSource = "modem"                     # from the modem, or heard on the line audio
    dtmf_whole_call: bool = False                           # keep every key of a call, not only windows
    pause_button_pin: int | str | None = None               # pauses recording (card payments)
    agreement_button_pin: int | str | None = None           # marks the current or last call
    private_button_pin: int | str | None = None             # a private call: at the answer, or before off-hook
    recording_led_pin: int | str | None = None              # lit while a call is recorded

    @model_validator(mode="before")
    @classmethod
    def _dtmf_caller_id(cls, raw):
        """`dtmf_caller_id = true` of earlier versions is `caller_id = "dtmf"`, with a warning."""
        if not isinstance(raw, dict) or "dtmf_caller_id" not in raw:
            return raw
        raw = dict(raw)
        old = raw.pop("dtmf_caller_id")
        name = raw.get("name", "?")
        if not isinstance(old, bool):
            raise ValueError(f"dtmf_caller_id: expected true or false, got {old!r} (it is now written "
                             'caller_id = "dtmf")')
        if old and raw.setdefault("caller_id", "dtmf") != "dtmf":
            raise ValueError(f"dtmf_caller_id = true and caller_id = {raw['caller_id']!r} disagree: "
                             "keep caller_id only")
        if old:
            log.warning('%s: dtmf_caller_id = true is now written caller_id = "dtmf"', name)
        else:
            log.warning("%s: dtmf_caller_id = false is the default and no longer a key: remove it", name)
        return raw

    @model_validator(mode="after")
    def _modem_for_caller_id(self):
        if "caller_id" in self.model_fields_set and self.caller_id == "modem" and self.modem is None:
            raise ValueError('caller_id = "modem" needs the line\'s modem (its serial device, e.g. '
                             'modem = "/dev/callrec-modem")')
        return self


class PurposeConfig(_Strict):
    """Why calls are kept, and so for how long."""

    retention_days: int = Field(ge=1, le=36500)
    legal_basis: str = Field(min_length=1)
    # Short of space, calls go lowest rank first; those above rank 1 only after the alarm stood
    # for `protected_grace_hours`.
    eviction_rank: int = Field(1, ge=1, le=9)
    # What data-protection authorities ask of this purpose (the settings warn when a line goes past
    # it): the longest retention, and recording only occasionally (a schedule or a share of calls).
    max_retention_days: int | None = Field(None, ge=1, le=36500)
    occasional: bool = False


DEFAULT_PURPOSES = {
    # The CNIL (France) asks that training recordings be occasional and kept at most 6 months.
    "training": PurposeConfig(
        retention_days=30, legal_basis="Legitimate interest in training staff (GDPR Art. 6(1)(f))",
        max_retention_days=183, occasional=True),
    "agreement": PurposeConfig(
        retention_days=730, legal_basis="Evidence of a contract made by phone (GDPR Art. 6(1)(b))",
        eviction_rank=2),
    "legal-obligation": PurposeConfig(
        retention_days=1825, legal_basis="A legal obligation to keep the record (GDPR Art. 6(1)(c))",
        eviction_rank=3),
}


class StoreConfig(_Strict):
    """How much the archive may take, and what it must leave free."""

    max_archive_mb: int = Field(0, ge=0)            # 0: no cap but the free-space floor
    min_free_mb: int = Field(500, ge=0)
    min_free_hours: float = Field(24.0, ge=0, le=10000)
    cleaner_interval_s: float = Field(300.0, ge=5, le=86400)
    reserve_mb: int = Field(32, ge=1, le=4096)     # given back to the call in progress when the disk fills
    protected_grace_hours: float = Field(24.0, ge=0, le=8760)   # alarm first, then evict an agreement


class WebhookConfig(_Strict):
    """Where to tell a CRM that a call ended, and the secret that signs the message."""

    url: str = Field(pattern=r"^https?://")
    secret_file: PathSetting                                        # readable by the appliance only


class AlarmsConfig(_Strict):
    """Alarms that leave the box: by e-mail (SMTP, TLS required) and, with a `[webhook]`, as webhook
    events. Without `smtp_host`, only the webhook is told. The password is in a file readable by
    the appliance only."""

    smtp_host: str | None = Field(None, pattern=r"^[A-Za-z0-9.-]+$")
    smtp_port: int | None = Field(None, ge=1, le=65535)     # default: 587 with STARTTLS, 465 with TLS
    security: Literal["starttls", "tls"] = "starttls"       # STARTTLS required, or TLS from the start
    ca_file: PathSetting | None = None                             # trust this authority (PEM) instead of the system's
    username: str | None = Field(None, min_length=1)
    password_file: PathSetting | None = None
    from_address: str | None = Field(None, pattern=EMAIL)
    to: list[Annotated[str, Field(pattern=EMAIL)]] = []
    timeout_s: float = Field(30.0, ge=1, le=300)
    webhook: bool = True                                    # also as webhook events, with a [webhook]
    reminder_hours: float = Field(24.0, ge=0, le=8760)      # an alarm still standing is told again (0: never)
    settle_s: float = Field(60.0, ge=0, le=3600)            # a condition counts once it stood (or was gone) this long
    check_interval_s: float = Field(30.0, ge=1, le=3600)
    clock_unsynced_minutes: float = Field(30.0, ge=1, le=10080)
    offload_backlog_calls: int = Field(200, ge=1)           # calls waiting to be offloaded, at most
    offload_backlog_hours: float = Field(24.0, ge=0.1, le=8760)     # the oldest waiting, at most
    recorder_down_after_s: float = Field(120.0, ge=10, le=86400)    # the web UI's watch on the recorder

    @model_validator(mode="after")
    def _mail_complete(self):
        if self.smtp_host is None:
            given = sorted({"smtp_port", "ca_file", "username", "password_file", "from_address", "to"}
                           & self.model_fields_set)
            if given:
                raise ValueError(f"{', '.join(given)}: only with smtp_host (the mail server)")
            return self
        if self.from_address is None or not self.to:
            raise ValueError("smtp_host needs from_address and to (a list of addresses)")
        if (self.username is None) != (self.password_file is None):
            raise ValueError("username and password_file go together (a login needs both)")
        return self

    @property
    def port(self) -> int:
        """The SMTP port: as given, else 587 for STARTTLS and 465 for TLS."""
        return self.smtp_port or (465 if self.security == "tls" else 587)

    def secret_files(self) -> dict[str, Path]:
        """The files the mail reads (its password, the authority to trust), by key name."""
        return {key: getattr(self, key) for key in ("password_file", "ca_file") if getattr(self, key) is not None}


class WebConfig(_Strict):
    """The web UI: where it listens. HTTPS on `https_port`; `http_port` only redirects to it (0: off)."""

    bind: str = "0.0.0.0"
    https_port: int = Field(443, ge=1, le=65535)
    http_port: int = Field(80, ge=0, le=65535)
    hostname: str = Field("callrec.local", min_length=1)    # the name in the device certificate
    session_hours: float = Field(12.0, ge=0.1, le=720)          # a session unused this long ends
    session_max_hours: float = Field(24.0, ge=1, le=720)         # and every session ends after this
    threads: int = Field(8, ge=2, le=64)


# -- [privacy]: who answers for the recordings, for the privacy notice and the access report ------

DOCUMENT_LANGUAGES = ("en", "fr", "nl", "pl")


class PrivacyConfig(_Strict):
    """The controller (the shop, who answers for the recordings), its data-protection officer, the
    supervisory authority customers may complain to, other recipients, and the language of the
    documents: what the privacy notice and a customer's access report say."""

    controller: str = Field("", max_length=200)              # the shop's legal name
    address: str = Field("", max_length=500)                 # postal address, lines apart
    email: str = Field("", pattern=r"^([^@\s]+@[^@\s]+\.[^@\s]+)?$")
    phone: str = Field("", pattern=r"^[+0-9 ()./-]{0,30}$")
    dpo: str = Field("", max_length=300)                     # the data-protection officer: name, e-mail
    authority: str = Field("", max_length=200)               # empty: the one of recorder.country_code
    authority_url: str = Field("", pattern=r"^(https?://\S+)?$")
    recipients: list[Annotated[str, Field(min_length=1, max_length=300)]] = []  # besides offload and CRM
    language: Literal[DOCUMENT_LANGUAGES] = "en"              # of documents, where not chosen

    def identity_missing(self) -> list[str]:
        """The keys of the controller's identity left empty: a notice without them is not lawful."""
        return [key for key in ("controller", "address") if not getattr(self, key)] + \
            ([] if self.email or self.phone else ["email"])


OFFLOAD_KEYS = {   # the keys of each kind of offload target; those marked required have no default
    "rsync": {"destination": True, "ssh_key_file": True, "known_hosts_file": True, "ssh_port": False},
    "s3": {"endpoint": True, "bucket": True, "access_key_id": True, "secret_key_file": True,
           "region": False, "prefix": False},
}


class OffloadConfig(_Strict):
    """Where finished recordings are copied too, each with its signed manifest: a NAS by rsync over
    SSH, or an S3-compatible bucket. Secrets are in files readable by the appliance only."""

    type: Literal["rsync", "s3"]
    destination: str | None = Field(None, pattern=r"^[^\s:]+:([^:\s]\S*)?$")     # user@host:/path
    ssh_port: int = Field(22, ge=1, le=65535)
    ssh_key_file: PathSetting | None = None
    known_hosts_file: PathSetting | None = None                    # host keys are always verified
    endpoint: str | None = Field(None, pattern=r"^https?://[^/\s]+/?$")
    bucket: str | None = Field(None, pattern=r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
    region: str = Field("us-east-1", min_length=1)
    prefix: str = Field("", pattern=r"^([^/\s][^\s]*/)?$")  # e.g. "shop-1/"
    access_key_id: str | None = Field(None, min_length=1)
    secret_key_file: PathSetting | None = None
    timeout_s: float = Field(60.0, ge=1, le=3600)
    retry_first_s: float = Field(10.0, ge=0.1, le=3600)
    retry_max_s: float = Field(900.0, ge=0.1, le=86400)

    @model_validator(mode="after")
    def _keys_of_its_type(self):
        missing = [key for key, required in OFFLOAD_KEYS[self.type].items()
                   if required and getattr(self, key) is None]
        if missing:
            raise ValueError(f"type = {self.type!r} needs {', '.join(missing)}")
        other = "s3" if self.type == "rsync" else "rsync"
        foreign = sorted(set(OFFLOAD_KEYS[other]) & self.model_fields_set)
        if foreign:
            raise ValueError(f"{', '.join(foreign)}: only for type = {other!r}")
        if self.retry_max_s < self.retry_first_s:
            raise ValueError("retry_max_s must be at least retry_first_s")
        return self

    def secret_files(self) -> dict[str, Path]:
        """The files this target reads (keys, known hosts, secrets), by key name."""
        return {key: getattr(self, key) for key in ("ssh_key_file", "known_hosts_file", "secret_key_file")
                if getattr(self, key) is not None}


def split_host_port(value: str) -> tuple[str, int | None]:
    """`host`, `host:port`, `[v6]` or `[v6]:port` → (host, port or None); ValueError when unreadable."""
    value = value.strip()
    if value.startswith("["):
        host, close, port = value[1:].partition("]")
        if not close or (port and not port.startswith(":")):
            raise ValueError(f"expected [IPv6 address]:port, got {value!r}")
        port = port[1:]
        if not is_ip_address(host) or ":" not in host:
            raise ValueError(f"expected an IPv6 address in brackets, got {value!r}")
    else:
        host, _, port = value.partition(":")
        if not re.fullmatch(r"[A-Za-z0-9.-]+", host):
            raise ValueError(f"expected host:port, got {value!r}")
    if port and not (port.isdigit() and 0 < int(port) < 65536):
        raise ValueError(f"expected a port from 1 to 65535, got {value!r}")
    return host, int(port) if port else None


def join_host_port(host: str, port: int | None) -> str:
    """The inverse of `split_host_port`."""
    shown = f"[{host}]" if ":" in host else host
    return shown if port is None else f"{shown}:{port}"


def is_ip_address(host: str) -> bool:
    """Whether `host` is an IPv4 or IPv6 address (not a name)."""
    import ipaddress
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False


def _address(value: str, default_port: int | None) -> str:
    """Check a `host:port` value (the port may be left out when there is a default)."""
    host, port = split_host_port(value)
    if (port or default_port) is None:
        raise ValueError(f"expected host:port, got {value!r}")
    return join_host_port(host, port or default_port)


class SipSideConfig(_Strict):
    """One side of a SIP trunk: the appliance's address on it (in Via, Contact and SDP, so a real
    address, not 0.0.0.0) and the peer that requests for this side go to."""

    listen: str                                     # "192.0.2.10:5060", "[2001:db8::10]:5060": UDP and TCP
    peer: str | None = None                         # "sip.operator.example" (found by DNS), "192.0.2.1:5060"
    transport: Literal["udp", "tcp", "tls"] = "udp"     # toward the peer (unless its NAPTR records choose)
    external: str | None = None                     # "203.0.113.7": the NAT router's address the peer reaches
    stun_server: str | None = None                  # "stun.example.net:3478": asks it that address instead
    keepalive_s: float = Field(30.0, ge=0, le=3600)     # an OPTIONS to the peer this often; 0: none
    tls_port: int | None = Field(None, ge=1, le=65535)  # SIP over TLS here (with a certificate); listen port + 1
    tls_certificate: PathSetting | None = None             # PEM: the appliance's certificate (and chain) on this side
    tls_key: PathSetting | None = None                     # PEM: its private key
    tls_ca: PathSetting | None = None                      # PEM: whom to trust for the peer's certificate; else the system's
    tls_verify: bool = True                         # check the peer's certificate and name

    @model_validator(mode="after")
    def _tls_files(self):
        if (self.tls_certificate is None) != (self.tls_key is None):
            raise ValueError("tls_certificate and tls_key go together")
        for key in ("tls_certificate", "tls_key", "tls_ca"):
            path = getattr(self, key)
            if path is not None and not os.access(path, os.R_OK):
                raise ValueError(f"{key}: cannot read {path}")
        return self

    @field_validator("listen")
    @classmethod
    def _concrete_address(cls, value):
        import ipaddress
        value = _address(value, None)
        host, _ = split_host_port(value)
        if not is_ip_address(host) or ipaddress.ip_address(host).is_unspecified:
            raise ValueError(f"expected the appliance's own IP address and a port, got {value!r}")
        return value

    @field_validator("peer")
    @classmethod
    def _peer_address(cls, value):
        # Kept without a port when written without one: a name is then looked up as RFC 3263 says.
        return None if value is None else join_host_port(*split_host_port(value))

    @field_validator("external")
    @classmethod
    def _external_address(cls, value):
        if value is None:
            return None
        host, port = split_host_port(value)
        if not is_ip_address(host):
            raise ValueError(f"expected the NAT router's public IP address (and a port), got {value!r}")
        return join_host_port(host, port)

    @field_validator("stun_server")
    @classmethod
    def _stun_server(cls, value):
        return None if value is None else join_host_port(*split_host_port(value))

    @model_validator(mode="after")
    def _one_public_address(self):
        if self.external is not None and self.stun_server is not None:
            raise ValueError("external and stun_server both give the NAT router's public address: keep one")
        return self

    @property
    def transport_chosen(self) -> bool:
        """Whether `transport` was written (else the peer's NAPTR records may choose it)."""
        return "transport" in self.model_fields_set


class SipTrunkConfig(CallRulesConfig):
    """A SIP trunk relayed through the appliance: the operator's side, the shop's PBX (or phones)
    side, the RTP ports, and the notice, purpose and caller controls of its calls."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,31}$")
    trunk: SipSideConfig                            # the operator
    pbx: SipSideConfig                              # the shop's PBX; without a peer, phones register
    rtp_port_min: int = Field(20000, ge=1024, le=65534)
    rtp_port_max: int = Field(20999, ge=1025, le=65535)
    rtp_timeout_s: float = Field(30.0, ge=1, le=3600)     # no RTP from a side this long ends the call
    dns_servers: list[str] = []                     # where the peers' names are looked up; none: the system's

    @field_validator("dns_servers")
    @classmethod
    def _dns_servers(cls, value):
        servers = []
        for server in value:
            host, port = split_host_port(server)
            if not is_ip_address(host):
                raise ValueError(f"expected a DNS server's IP address (and port), got {server!r}")
            servers.append(join_host_port(host, port))
        return servers

    @model_validator(mode="after")
    def _usable(self):
        if self.trunk.peer is None:
            raise ValueError(f"sip_trunk {self.name!r}: trunk.peer (the operator's SIP server) is required")
        if "answer_fallback_s" in self.model_fields_set:
            raise ValueError(f"sip_trunk {self.name!r}: answer_fallback_s is for analog lines (a trunk knows "
                             "the answer from the 200 OK and plays the notice to the called party then)")
        if self.rtp_port_max - self.rtp_port_min < 3:
            raise ValueError(f"sip_trunk {self.name!r}: rtp_port_max must be at least rtp_port_min + 3")
        return self


class Config(_Strict):
    """The whole file: `[recorder]`, `[store]`, `[purpose.NAME]`, `[webhook]`, `[alarms]`, `[web]`,
    `[offload]`, `[privacy]` tables, one `[[line]]` per analog line and one `[[sip_trunk]]` per SIP trunk."""

    recorder: RecorderConfig = RecorderConfig()
    store: StoreConfig = StoreConfig()
    webhook: WebhookConfig | None = None
    alarms: AlarmsConfig | None = None
    web: WebConfig = WebConfig()
    offload: OffloadConfig | None = None
    privacy: PrivacyConfig = PrivacyConfig()
    purpose: dict[str, PurposeConfig] = DEFAULT_PURPOSES
    line: list[LineConfig] = []
    sip_trunk: list[SipTrunkConfig] = []

    @property
    def line_names(self) -> list[str]:
        """Every line recorded, analog lines then SIP trunks: the names calls are catalogued under."""
        return [line.name for line in self.line] + [trunk.name for trunk in self.sip_trunk]

    @property
    def outgoing_policy(self) -> dict[str, OutgoingPolicy]:
        """How each line's and trunk's outgoing calls are made known to the called party, by line
        name ("announce", "beep" or "off"): for the status page and the privacy notice."""
        return {line.name: line.outgoing for line in [*self.line, *self.sip_trunk]}

    @model_validator(mode="before")
    @classmethod
    def _record_from_per_line(cls, raw):
        """`[recorder] record_from` of earlier versions applies to each line that sets none."""
        if not isinstance(raw, dict) or not isinstance(raw.get("recorder"), dict) or "record_from" not in raw["recorder"]:
            return raw
        recorder = dict(raw["recorder"])
        value = recorder.pop("record_from")
        log.warning("[recorder] record_from is now a setting of each line ([[line]] record_from)")
        lines = [line if not isinstance(line, dict) or "record_from" in line else {**line, "record_from": value}
                 for line in raw.get("line", [])]
        return {**raw, "recorder": recorder, "line": lines}

    @field_validator("purpose", mode="before")
    @classmethod
    def _over_defaults(cls, purposes):
        # A [purpose.NAME] table of a built-in purpose changes the keys it gives, the others stay.
        if not isinstance(purposes, dict):
            return purposes
        return {name: {**DEFAULT_PURPOSES[name].model_dump(), **table}
                if name in DEFAULT_PURPOSES and isinstance(table, dict) else table for name, table in purposes.items()}

    @field_validator("purpose", mode="after")
    @classmethod
    def _with_defaults(cls, purposes):
        # The defaults are always there; a [purpose.NAME] table adds a class or changes one.
        return {**DEFAULT_PURPOSES, **purposes}

    @model_validator(mode="after")
    def _distinct_lines(self):
        if not self.line and not self.sip_trunk:
            raise ValueError("nothing to record: add at least one analog line ([[line]]) or one SIP trunk ([[sip_trunk]])")
        for line in [*self.line, *self.sip_trunk]:
            if line.purpose not in self.purpose:
                raise ValueError(f"line {line.name!r}: purpose {line.purpose!r} is not one of "
                                 f"{', '.join(sorted(self.purpose))} (define it in a [purpose.NAME] table)")
        names = [line.name for line in [*self.line, *self.sip_trunk]]
        if len(set(names)) != len(names):
            raise ValueError(f"line names must be distinct, got {names}")
        listens = [side.listen for trunk in self.sip_trunk for side in (trunk.trunk, trunk.pbx)]
        if len(set(listens)) != len(listens):
            raise ValueError(f"each SIP side needs its own listen address, got {listens}")
        wiring = {"GPIO pin": [], "capture device": [], "playback device": [], "modem": []}
        for index, line in enumerate(self.line):
            for key in ("hook_pin", "ring_pin", "pause_button_pin", "agreement_button_pin", "private_button_pin",
                        "recording_led_pin"):
                wiring["GPIO pin"].append((f"line[{index}].{key}", getattr(line, key)))
            for kind, key in (("capture device", "capture"), ("playback device", "playback"), ("modem", "modem")):
                wiring[kind].append((f"line[{index}].{key}", getattr(line, key)))
        wiring["GPIO pin"].append(("recorder.fault_led_pin", self.recorder.fault_led_pin))
        for kind, uses in wiring.items():
            seen = {}
            for key, value in uses:
                if value is None:
                    continue
                same = _pin_key(value) if kind == "GPIO pin" else str(value)
                if same in seen:
                    raise ValueError(f"{kind} {value} is used twice: by {seen[same]} and by {key}")
                seen[same] = key
        return self


def _pin_key(pin: int | str) -> str:
    """One spelling per pin: 17, "17", "GPIO17" and "BCM17" are the same pin."""
    match = re.fullmatch(r"(?:GPIO|BCM)?(\d+)", str(pin).strip(), re.IGNORECASE)
    return match.group(1) if match else str(pin).upper()


def demo_path(name: str) -> Path:
    """A file of the bundled demo (config, scenario, sounds)."""
    return Path(str(resources.files("appliance") / "demo" / name))


def _key_name(loc: tuple) -> str:
    """Render a pydantic location as the TOML key a technician sees, e.g. `line[0].hook_pin`."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("int", "str", "float", "bool", "none"):
            continue  # union member names are not keys
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


def format_validation_error(path: Path, error: ValidationError, what: str = "configuration") -> str:
    """Turn a pydantic error into one line per problem: file, key, what was expected, what was found."""
    lines = [f"invalid {what} in {path}:"]
    seen = set()
    for err in error.errors(include_url=False):
        key = _key_name(err["loc"])
        if key in seen:
            continue
        seen.add(key)
        if err["type"] == "missing":
            lines.append(f"  {key}: required key is missing")
        elif err["type"] == "extra_forbidden":
            lines.append(f"  {key}: unknown key")
        elif err["type"] == "value_error":
            where = f"{key}: " if err["loc"] else ""
            lines.append(f"  {where}{err['msg'].removeprefix('Value error, ')}")
        elif key.endswith("_pin"):
            lines.append(f"  {key}: expected a GPIO number (17) or name (\"GPIO17\") (got {err['input']!r})")
        else:
            lines.append(f"  {key}: {err['msg']} (got {err['input']!r})")
    return "\n".join(lines)


def load_toml(path: Path, model: type[BaseModel], what: str, error: type[Exception]):
    """Read a TOML file and validate it against `model`; any problem raises `error` with a message
    naming the file (and the keys at fault)."""
    try:
        raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise error(f"{what} file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise error(f"cannot read {what} file {path}: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise error(f"{path} is not valid TOML: {exc}") from None
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise error(format_validation_error(path, exc, what)) from None


def load_config(path: Path = DEFAULT_CONFIG) -> Config:
    """Read and validate a configuration file; relative paths in it are taken from its folder."""
    path = Path(path)
    return resolve_paths(load_toml(path, Config, "configuration", ConfigError), path)


def resolve_paths(config: Config, source: Path) -> Config:
    """Make the data folder and notice paths absolute against the folder of `source`, the file the
    config came from, and check that the notices exist."""
    base = source.absolute().parent

    def with_notice(entries: list, table: str) -> list:
        resolved = []
        for index, entry in enumerate(entries):
            notice = entry.notice if entry.notice.is_absolute() else base / entry.notice
            if not notice.is_file():
                raise ConfigError(f"invalid configuration in {source}:\n  {table}[{index}].notice: no such file {notice}")
            resolved.append(entry.model_copy(update={"notice": notice}))
        return resolved
    lines, trunks = with_notice(config.line, "line"), with_notice(config.sip_trunk, "sip_trunk")
    data_dir = config.recorder.data_dir
    runtime_dir = config.recorder.runtime_dir
    if runtime_dir is not None and not runtime_dir.is_absolute():
        runtime_dir = base / runtime_dir
    recorder = config.recorder.model_copy(
        update={"data_dir": data_dir if data_dir.is_absolute() else base / data_dir, "runtime_dir": runtime_dir})
    webhook = config.webhook
    if webhook is not None:
        secret = webhook.secret_file if webhook.secret_file.is_absolute() else base / webhook.secret_file
        if not secret.is_file():
            raise ConfigError(f"invalid configuration in {source}:\n  webhook.secret_file: no such file {secret}")
        webhook = webhook.model_copy(update={"secret_file": secret})
    def with_files(table, name: str):
        if table is None:
            return None
        files = {key: path if path.is_absolute() else base / path for key, path in table.secret_files().items()}
        for key, path in files.items():
            if not path.is_file():
                raise ConfigError(f"invalid configuration in {source}:\n  {name}.{key}: no such file {path}")
        return table.model_copy(update=files)
    return config.model_copy(update={"line": lines, "sip_trunk": trunks, "recorder": recorder, "webhook": webhook,
                                     "offload": with_files(config.offload, "offload"),
                                     "alarms": with_files(config.alarms, "alarms")})
