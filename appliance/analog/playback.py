"""Playing the notice (or the beep of an outgoing call) into an analog line through its ALSA playback device."""

import time

import alsaaudio

from appliance.beep import Tone
from appliance.notice import Notice
from appliance.store.spool import SAMPLE_BYTES


def play(notice: Notice | Tone, device: str, period_frames: int) -> float:
    """Play the notice (or a tone) through ALSA playback device `device`; block until it has been heard.

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
