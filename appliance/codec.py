"""Decoding sound files to the card's PCM and encoding recordings, through PyAV (FFmpeg's libraries).

PyAV's libopus costs about half the CPU of libsndfile's Opus encoder on the same audio, and it
decodes any common format (WAV, MP3, Ogg, FLAC, M4A) and resamples in the same pass.
"""

from collections.abc import Iterable
from pathlib import Path

import av
import numpy as np

from appliance.errors import AudioFileError

# Archive format name → (container, codec, file suffix).
FORMATS = {
    "opus": ("ogg", "libopus", ".opus"),
    "flac": ("flac", "flac", ".flac"),
    "wav": ("wav", "pcm_s16le", ".wav"),
}


def decode_to_pcm(path: Path, rate: int) -> bytes:
    """Decode a sound file of any common format to mono signed 16-bit PCM at `rate`."""
    try:
        with av.open(str(path)) as container:
            if not container.streams.audio:
                raise AudioFileError(f"{path} holds no audio stream")
            resampler = av.AudioResampler(format="s16", layout="mono", rate=rate)
            parts = []
            for frame in container.decode(audio=0):
                parts.extend(f.to_ndarray().tobytes() for f in resampler.resample(frame))
            parts.extend(f.to_ndarray().tobytes() for f in resampler.resample(None))
    except (av.FFmpegError, OSError) as exc:
        raise AudioFileError(f"cannot decode sound file {path}: {exc}") from None
    return b"".join(parts)


def encode(chunks: Iterable[bytes], rate: int, channels: int, out_path: Path, fmt: str,
           opus_bitrate: int = 16000) -> None:
    """Encode raw s16 PCM chunks into `out_path` in archive format `fmt` (opus, flac or wav)."""
    container_name, codec, _ = FORMATS[fmt]
    layout = "mono" if channels == 1 else "stereo"
    with av.open(str(out_path), "w", format=container_name) as out:
        stream = out.add_stream(codec, rate=rate, layout=layout)
        if fmt == "opus":
            stream.bit_rate = opus_bitrate
        pts = 0
        for chunk in chunks:
            samples = np.frombuffer(chunk, dtype="<i2").reshape(1, -1)
            frame = av.AudioFrame.from_ndarray(samples, format="s16", layout=layout)
            frame.sample_rate = rate
            frame.pts = pts
            pts += samples.shape[1] // channels
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))


def suffix(fmt: str) -> str:
    """The file suffix of an archive format, e.g. `.opus`."""
    return FORMATS[fmt][2]
