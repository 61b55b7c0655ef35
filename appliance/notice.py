"""The notice ("this call may be recorded"): decoded once at start-up, at the rate of the line it is played into."""

import hashlib
from dataclasses import dataclass
from pathlib import Path

from appliance.codec import decode_to_pcm
from appliance.store.spool import SAMPLE_BYTES


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
