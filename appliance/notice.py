"""The notice ("this call may be recorded"): decoded once at start-up, played into the line on answer."""

import hashlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import alsaaudio

from appliance.codec import decode_to_pcm
from appliance.spool import SAMPLE_BYTES

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Notice:
    """A notice ready to play: mono PCM at the card's rate, and the SHA-256 of its source file."""

    path: Path
    pcm: bytes
    rate: int
    sha256: str

    @property
    def duration_s(self) -> float:
        """How long the notice plays."""
        return len(self.pcm) / SAMPLE_BYTES / self.rate


def load_notice(path: Path, rate: int) -> Notice:
    """Decode a notice file (WAV, MP3, Ogg, FLAC…) and convert it to `rate`, mono."""
    digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    return Notice(Path(path), decode_to_pcm(path, rate), rate, digest)


def play(notice: Notice, device: str, period_frames: int) -> float:
    """Play the notice through ALSA playback device `device`; block until it has been heard.

    Returns the monotonic time playback started. Raises alsaaudio.ALSAAudioError if the device
    cannot be opened or fails.
    """
    pcm = alsaaudio.PCM(alsaaudio.PCM_PLAYBACK, alsaaudio.PCM_NORMAL, device=device,
                        rate=notice.rate, channels=1, format=alsaaudio.PCM_FORMAT_S16_LE,
                        periodsize=period_frames)
    started = time.monotonic()
    try:
        step = period_frames * SAMPLE_BYTES
        for offset in range(0, len(notice.pcm), step):
            chunk = notice.pcm[offset:offset + step]
            pcm.write(chunk.ljust(step, b"\0"))
        pcm.drain()
    finally:
        pcm.close()
    # A card blocks in write() and drain(); a device that does not (a file sink) must not make
    # the notice seem shorter than it is.
    remaining = started + notice.duration_s - time.monotonic()
    if remaining > 0:
        time.sleep(remaining)
    return started
