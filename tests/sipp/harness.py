"""SIPp on 127.0.0.1 around a SIP trunk of the real recorder: free ports, RTP pcaps of known audio,
SIPp runs, a raw RTP endpoint, and reading a stereo recording back."""

import os
import random
import shutil
import socket
import struct
import subprocess
import threading
import time
from pathlib import Path

import av
import numpy as np

from appliance.sip import g711
from conftest import RATE, _toml

SIPP = shutil.which("sipp") or "sipp"
SCENARIOS = Path(__file__).parent
SIPP_PCAPS = Path("/usr/share/sip-tester")
HOST = "127.0.0.1"


# Ports are handed out in turn from below the kernel's ephemeral range (32768 and up), so that a
# port given to one party is never part of another's range, nor taken meanwhile by an outgoing
# connection of some other process.
_PORTS = range(20000, 32000)
if "PYTEST_XDIST_WORKER" in os.environ:        # test processes side by side: each its own share
    _share = len(_PORTS) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])
    _first = _PORTS.start + int(os.environ["PYTEST_XDIST_WORKER"].removeprefix("gw")) * _share
    _PORTS = range(_first, _first + _share)
_next_port = _PORTS.start + random.randrange(0, len(_PORTS), 10)


def free_port(span: int = 1) -> int:
    """A port (and the `span - 1` after it) free on 127.0.0.1 for both UDP and TCP, not handed out before."""
    global _next_port
    for _ in range(len(_PORTS) // 10):
        if _next_port + span > _PORTS.stop:
            _next_port = _PORTS.start
        base, _next_port = _next_port, _next_port + span
        held = []
        try:
            for port in range(base, base + span):
                for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
                    sock = socket.socket(socket.AF_INET, kind)
                    held.append(sock)
                    sock.bind((HOST, port))
            return base
        except OSError:
            continue
        finally:
            for sock in held:
                sock.close()
    raise RuntimeError("no free port")


def write_rtp_pcap(path: Path, packets) -> Path:
    """Write (seconds, RTP packet) pairs as the UDP frames of a pcap SIPp can play."""
    out = [struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)]
    for index, (t, rtp) in enumerate(packets):
        udp = struct.pack("!HHHH", 5000, 6000, 8 + len(rtp), 0) + rtp
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), index & 0xFFFF, 0, 64, 17, 0,
                         socket.inet_aton(HOST), socket.inet_aton(HOST)) + udp
        frame = bytes(12) + b"\x08\x00" + ip
        out.append(struct.pack("<IIII", int(t), round((t % 1) * 1e6), len(frame), len(frame)) + frame)
    path.write_bytes(b"".join(out))
    return path


def g711_codes(samples: np.ndarray, payload_type: int) -> bytes:
    """Float samples (full scale 1.0) encoded in G.711."""
    return g711.encode((np.clip(samples, -1, 32767 / 32768) * 32768).astype("<i2").tobytes(), payload_type)


def write_pcap(path: Path, samples: np.ndarray, payload_type: int, ssrc: int, ptime: float = 0.02) -> Path:
    """Write float samples (full scale 1.0) as G.711 RTP packets in a pcap SIPp can play."""
    codes = g711_codes(samples, payload_type)
    step = int(RATE * ptime)
    return write_payloads_pcap(path, [codes[at:at + step] for at in range(0, len(codes) - step + 1, step)],
                               payload_type, ssrc, ptime)


def write_payloads_pcap(path: Path, payloads: list[bytes], payload_type: int, ssrc: int, ptime: float = 0.02) -> Path:
    """Write RTP payloads of `ptime` each (any codec on the 8000 Hz RTP clock) in a pcap SIPp can play."""
    step = int(RATE * ptime)
    return write_rtp_pcap(path, [
        (index * ptime, struct.pack("!BBHII", 0x80, payload_type | (0x80 if index == 0 else 0), index + 1000,
                                    (index + 1) * step, ssrc) + payload)
        for index, payload in enumerate(payloads)])


def pcap_payloads(path: Path) -> list[bytes]:
    """The RTP payloads of a pcap written by `write_payloads_pcap`, in order."""
    data, offset, payloads = path.read_bytes(), 24, []
    while offset + 16 <= len(data):
        length = struct.unpack_from("<I", data, offset + 8)[0]
        payloads.append(data[offset + 16 + 14 + 20 + 8 + 12:offset + 16 + length])
        offset += 16 + length
    return payloads


def pcap_audio(path: Path) -> np.ndarray:
    """The audio a G.711 RTP pcap carries, as float samples."""
    data = path.read_bytes()
    offset, parts = 24, []
    while offset + 16 <= len(data):
        length = struct.unpack_from("<I", data, offset + 8)[0]
        frame = data[offset + 16:offset + 16 + length]
        offset += 16 + length
        rtp = frame[14 + 20 + 8:]
        if rtp[1] & 0x7F in g711.LAWS:
            parts.append(g711.decode(rtp[12:], rtp[1] & 0x7F))
    return np.frombuffer(b"".join(parts), dtype="<i2") / 32768.0


def sipp(scenario: str, folder: Path, port: int, media_port: int, remote: str | None = None,
         duration_ms: int = 1000, transport: str = "u1", calls: int = 1, keys: dict | None = None,
         service: str = "shop", extra: tuple = (), host: str = HOST, prefix: tuple = ()) -> subprocess.Popen:
    """Start SIPp on a scenario of tests/sipp in `folder` (where its pcaps are): a UAC when it has
    a `remote` to call, else a UAS waiting on `port` of `host` (`prefix`: e.g. `ip netns exec NAME`)."""
    keys = {"caller": "3225550000", "pai": "+3225551234", "rtp_port": str(media_port), "pt": "8",
            "codec": "PCMA", **(keys or {})}
    command = [*prefix, SIPP, "-sf", str(SCENARIOS / scenario), "-i", host, "-p", str(port), "-mi", host,
               "-mp", str(media_port), "-t", transport, "-m", str(calls), "-l", str(calls), "-r", str(calls),
               "-d", str(duration_ms), "-nostdin", "-timeout", "40s", "-timeout_error", "-trace_err",
               "-max_socket", "200", *extra]
    for key, value in keys.items():
        command += ["-key", key, value]
    if remote:
        command += ["-s", service, remote]
    return subprocess.Popen(command, cwd=folder, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def finish(process: subprocess.Popen, folder: Path, timeout: float = 45) -> None:
    """Wait for SIPp; fail with its error log when a call did not go as the scenario says."""
    try:
        _, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        _, err = process.communicate()
    if process.returncode != 0:
        logs = "".join(p.read_text(errors="replace")[-3000:] for p in folder.glob("*_errors.log"))
        raise AssertionError(f"sipp {process.args[2]} exited {process.returncode}: {err.decode()[-2000:]}\n{logs}")


def trunk_config(folder: Path, trunk_port: int, pbx_port: int, trunk_peer: int, pbx_peer: int | None,
                 notice: Path, rtp_base: int, transport: str = "udp", rtp_ports: int = 100,
                 archive_format: str = "flac", keepalive_s: float = 0.0, **settings) -> Path:
    """An appliance.toml with one SIP trunk on 127.0.0.1 and nothing else; its peers are not
    pinged unless `keepalive_s` says how often (SIPp as a UAS cannot answer an OPTIONS outside
    its scenario's calls)."""
    recorder = {"data_dir": str(folder / "data"), "format": archive_format}
    trunk = {"name": "sip1", "notice": str(notice), "rtp_port_min": rtp_base, "rtp_port_max": rtp_base + rtp_ports - 1,
             "rtp_timeout_s": 5.0, **settings}
    text = "[recorder]\n" + "".join(f"{k} = {_toml(v)}\n" for k, v in recorder.items())
    text += "\n[[sip_trunk]]\n" + "".join(f"{k} = {_toml(v)}\n" for k, v in trunk.items())
    text += f'\n[sip_trunk.trunk]\nlisten = "{HOST}:{trunk_port}"\npeer = "{HOST}:{trunk_peer}"\ntransport = "{transport}"\n'
    text += f'keepalive_s = {keepalive_s}\n'
    text += f'\n[sip_trunk.pbx]\nlisten = "{HOST}:{pbx_port}"\ntransport = "{transport}"\nkeepalive_s = {keepalive_s}\n'
    if pbx_peer is not None:
        text += f'peer = "{HOST}:{pbx_peer}"\n'
    path = folder / "appliance.toml"
    path.write_text(text)
    return path


def read_stereo(path: Path, rate: int = RATE) -> tuple[np.ndarray, np.ndarray]:
    """The left and right channels of a recording at `rate`, as float samples."""
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        assert stream.channels == 2, f"{path} has {stream.channels} channel(s)"
        resampler = av.AudioResampler(format="s16", layout="stereo", rate=rate)
        parts = [bytes(out.planes[0])[:out.samples * 4]
                 for frame in [*container.decode(stream), None] for out in resampler.resample(frame)]
    data = np.frombuffer(b"".join(parts), dtype="<i2") / 32768.0
    return data[0::2], data[1::2]


class RtpEndpoint(threading.Thread):
    """A phone's media on a UDP socket: keeps what it receives (decoded), and once the appliance
    has sent it something, sends `samples` back in real time, 20 ms a packet (or `payloads`, 20 ms
    each, already encoded in `payload_type`)."""

    def __init__(self, samples: np.ndarray | None, payload_type: int = g711.PCMA, payloads: list[bytes] | None = None):
        super().__init__(daemon=True)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((HOST, 0))
        self.sock.settimeout(0.005)
        self.port = self.sock.getsockname()[1]
        if payloads is None:
            codes = g711_codes(samples, payload_type)
            payloads = [codes[at:at + 160] for at in range(0, len(codes), 160)]
        self.payloads = payloads
        self.payload_type = payload_type
        self.received: list[tuple[float, bytes]] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        peer, sent, start = None, 0, None
        while not self.stopping.is_set():
            try:
                data, source = self.sock.recvfrom(2048)
                self.received.append((time.monotonic(), data))
                peer = peer or source
            except socket.timeout:
                pass
            if peer is None:
                continue
            if start is None:
                start = time.monotonic()
            while sent < len(self.payloads) and time.monotonic() >= start + sent * 0.02:
                self.sock.sendto(struct.pack("!BBHII", 0x80, self.payload_type, sent, sent * 160, 0x1234)
                                 + self.payloads[sent], peer)
                sent += 1

    def audio(self) -> np.ndarray:
        """What it received, in arrival order, decoded."""
        parts = [g711.decode(data[12:], data[1] & 0x7F) for _, data in self.received if data[1] & 0x7F in g711.LAWS]
        return np.frombuffer(b"".join(parts), dtype="<i2") / 32768.0

    def close(self) -> None:
        """Stop and release the socket."""
        self.stopping.set()
        self.join()
        self.sock.close()
