"""The notice ("this call may be recorded"): decoded once at start-up, at the rate of the line it is played into."""

import hashlib
from dataclasses import dataclass
from pathlib import Path

from appliance.beep import Tone
from appliance.codec import decode_to_pcm


@dataclass(frozen=True)
class Notice(Tone):
    """A notice ready to play: mono PCM at the card's rate, and its source file with its SHA-256."""

    path: Path
    sha256: str


def load_notice(path: Path, rate: int) -> Notice:
    """Decode a notice file (WAV, MP3, Ogg, FLAC…) and convert it to `rate`, mono."""
    digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    return Notice(decode_to_pcm(path, rate), rate, Path(path), digest)
