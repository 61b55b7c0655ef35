"""baresip, a real softphone from Debian, as a party of a call through a SIP trunk of the recorder:
it dials a URI, sends a WAV file as its microphone, and keeps what it heard (decoded) and its log."""

import shutil
import subprocess
from pathlib import Path

import av
import numpy as np

from conftest import RATE, write_wav
from sipp.harness import HOST, free_port

BARESIP = shutil.which("baresip") or "baresip"
MODULES = Path("/usr/lib/baresip/modules")


class Baresip:
    """One baresip in its own configuration folder, with an account `user` that does not register;
    `srtp`: it offers and takes only SRTP (RTP/SAVP, SDES keys); `answer`: it answers calls at once;
    `tls`: a folder of tests/sipp/certs.py, for SIP over TLS on `port + 1` (its certificate, its CA);
    `codecs`: those it offers (G.711 and G.722 are loaded); `rate`: the microphone's; `host`: the
    address it listens on, IPv4 or IPv6."""

    def __init__(self, folder: Path, microphone: np.ndarray, codecs: str = "PCMA", host: str = HOST,
                 prefix: tuple = (), user: str = "operator", srtp: bool = False, answer: bool = False,
                 tls: Path | None = None, rate: int = RATE):
        self.folder, self.prefix = folder, prefix      # prefix: e.g. `ip netns exec NAME`, to run elsewhere
        folder.mkdir(parents=True, exist_ok=True)
        self.port, rtp = free_port(2), free_port(4)     # SIP over TLS on the second port
        where = f"[{host}]" if ":" in host else host
        write_wav(folder / "microphone.wav", microphone, rate)
        # aubridge is a player without a sound card; sndfile dumps what was decoded (and sent).
        (folder / "config").write_text(
            f"sip_listen {where}:{self.port}\n"
            f"audio_source aufile,{folder / 'microphone.wav'}\n"
            "audio_player aubridge,speaker\naudio_alert aubridge,speaker\n"
            f"rtp_ports {rtp}-{rtp + 3}\n"
            f"module_path {MODULES}\n"
            "module g711.so\nmodule g722.so\nmodule aufile.so\nmodule aubridge.so\nmodule sndfile.so\n"
            + ("module srtp.so\n" if srtp else "") +
            "module_app account.so\nmodule_app menu.so\n"
            f"snd_path {folder}\n"
            + (f"sip_certificate {tls / 'both.pem'}\nsip_cafile {tls / 'ca.pem'}\n" if tls else ""))
        params = f";regint=0;audio_codecs={codecs}" + (";mediaenc=srtp-mand" if srtp else "") + \
            (";answermode=auto" if answer else "")
        (folder / "accounts").write_text(f"<sip:{user}@{where}:{self.port}>{params}\n")
        self.tls_port = self.port + 1
        self.log = folder / "baresip.log"
        self.process: subprocess.Popen | None = None
        self.family = ["-6"] if ":" in host else []     # else its offers would name an IPv4 address

    def call(self, uri: str, seconds: float) -> None:
        """Dial `uri`, talk for about `seconds`, hang up (baresip quits)."""
        self.start(seconds, f"/dial {uri}")
        self.wait(seconds + 20)

    def start(self, seconds: float, command: str | None = None) -> None:
        """Run for `seconds` (taking calls, or doing `command` first) without waiting for it."""
        extra = ["-e", command] if command else []
        with self.log.open("w") as log:
            self.process = subprocess.Popen([*self.prefix, BARESIP, "-f", str(self.folder), *self.family, *extra,
                                             "-t", str(round(seconds))],
                                            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def wait(self, timeout: float = 30) -> None:
        """Wait until it quits; fail if it did not quit well."""
        assert self.process.wait(timeout) == 0, self.log.read_text(errors="replace")[-2000:]

    def heard(self, rate: int = RATE) -> np.ndarray:
        """What it decoded from the far end, at `rate`, full scale 1.0."""
        [dump] = self.folder.glob("dump-*-dec.wav")
        with av.open(str(dump)) as container:
            resampler = av.AudioResampler(format="s16", layout="mono", rate=rate)
            parts = [bytes(out.planes[0])[:out.samples * 2]
                     for frame in [*container.decode(audio=0), None] for out in resampler.resample(frame)]
        return np.frombuffer(b"".join(parts), dtype="<i2") / 32768.0

    def said(self, text: str) -> bool:
        """Whether its log has `text`."""
        return text in self.log.read_text(errors="replace")
