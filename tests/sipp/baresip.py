"""baresip, a real softphone from Debian, as a party of a call through a SIP trunk of the recorder:
it dials a URI, sends a WAV file as its microphone, and keeps what it heard (decoded) and its log."""

import shutil
import subprocess
import wave
from pathlib import Path

import numpy as np

from conftest import write_wav
from sipp.harness import HOST, free_port

BARESIP = shutil.which("baresip") or "baresip"
MODULES = Path("/usr/lib/baresip/modules")


class Baresip:
    """One baresip in its own configuration folder, with an account that does not register."""

    def __init__(self, folder: Path, microphone: np.ndarray, codecs: str = "PCMA", host: str = HOST,
                 prefix: tuple = ()):
        self.folder, self.prefix = folder, prefix      # prefix: e.g. `ip netns exec NAME`, to run elsewhere
        folder.mkdir(parents=True, exist_ok=True)
        self.port, rtp = free_port(), free_port(4)
        write_wav(folder / "microphone.wav", microphone)
        # aubridge is a player without a sound card; sndfile dumps what was decoded (and sent).
        (folder / "config").write_text(
            f"sip_listen {host}:{self.port}\n"
            f"audio_source aufile,{folder / 'microphone.wav'}\n"
            "audio_player aubridge,speaker\naudio_alert aubridge,speaker\n"
            f"rtp_ports {rtp}-{rtp + 3}\n"
            f"module_path {MODULES}\n"
            "module g711.so\nmodule aufile.so\nmodule aubridge.so\nmodule sndfile.so\n"
            "module_app account.so\nmodule_app menu.so\n"
            f"snd_path {folder}\n")
        (folder / "accounts").write_text(f"<sip:operator@{host}:{self.port}>;regint=0;audio_codecs={codecs}\n")
        self.log = folder / "baresip.log"

    def call(self, uri: str, seconds: float) -> None:
        """Dial `uri`, talk for about `seconds`, hang up (baresip quits)."""
        with self.log.open("w") as log:
            subprocess.run([*self.prefix, BARESIP, "-f", str(self.folder), "-e", f"/dial {uri}", "-t", str(round(seconds))],
                           stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                           timeout=seconds + 20, check=True)

    def heard(self) -> np.ndarray:
        """What it decoded from the far end, full scale 1.0."""
        [dump] = self.folder.glob("dump-*-dec.wav")
        with wave.open(str(dump)) as w:
            return np.frombuffer(w.readframes(w.getnframes()), dtype="<i2") / 32768.0

    def said(self, text: str) -> bool:
        """Whether its log has `text`."""
        return text in self.log.read_text(errors="replace")
