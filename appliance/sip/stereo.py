"""The timeline of a stereo recording: two streams of audio placed by their RTP timestamps.

Each channel's packets land at the sample their timestamp says, counted from where the stream's
first packet arrived; a lost packet, a hold, a stream that has not started yet leave silence, so
the two sides stay in step and durations stay true. A stream whose timestamps jump (a new SSRC, a
resumed call, a sender's clock that drifted half a second) is anchored again on its arrival time.
Audio is taken out interleaved (left, right) a little behind real time, so late packets still
find their place. The timeline runs at the call's rate (16 kHz for a wideband call), its RTP
timestamps at the codecs' 8000 Hz clock.
"""

from appliance.sip.codecs import RTP_CLOCK

RATE = 8000
REANCHOR_S = 0.5


class _Channel:
    def __init__(self):
        self.buffer = bytearray()           # s16le from the timeline's `taken` frame on
        self.ssrc: int | None = None
        self.ts_base = 0
        self.frame_base = 0


class Timeline:
    """Two channels of s16le audio at `rate` on one clock whose frame 0 is monotonic time `start`."""

    def __init__(self, start: float, rate: int = RATE):
        self.start = start
        self.rate = rate
        self.ticks = rate // RTP_CLOCK      # frames per RTP timestamp unit
        self.taken = 0                      # frames handed out so far
        self.channels = (_Channel(), _Channel())
        self.mutes: list[list] = []         # [first frame, end frame or None]: silence

    def frame_at(self, t: float) -> int:
        """The frame of monotonic instant `t`."""
        return round((t - self.start) * self.rate)

    def put(self, channel: int, ssrc: int, timestamp: int, pcm: bytes, arrival: float) -> None:
        """Place one packet's audio by its RTP timestamp."""
        ch = self.channels[channel]
        arrived = self.frame_at(arrival)
        if ch.ssrc == ssrc:
            delta = (timestamp - ch.ts_base) & 0xFFFFFFFF
            if delta >= 1 << 31:
                delta -= 1 << 32
            frame = ch.frame_base + delta * self.ticks
            if abs(frame - arrived) <= REANCHOR_S * self.rate:
                self._place(ch, frame, pcm)
                return
        ch.ssrc, ch.ts_base, ch.frame_base = ssrc, timestamp, arrived
        self._place(ch, arrived, pcm)

    def _place(self, ch: _Channel, frame: int, pcm: bytes) -> None:
        offset = 2 * (frame - self.taken)
        if offset < 0:                       # too late: that part was taken already
            pcm, offset = pcm[-offset:], 0
        if not pcm:
            return
        end = offset + len(pcm)
        if len(ch.buffer) < end:
            ch.buffer.extend(bytes(end - len(ch.buffer)))
        ch.buffer[offset:end] = pcm

    def mute(self, frame: int) -> None:
        """Silence from `frame` on (a pause), until `unmute`."""
        self.mutes.append([max(frame, self.taken), None])

    def unmute(self, frame: int) -> None:
        """End the silence begun by `mute`."""
        for interval in self.mutes:
            if interval[1] is None:
                interval[1] = max(frame, interval[0])

    def peek(self, channel: int, first: int, end: int) -> bytes:
        """One channel's s16le frames `first` to `end` (not taken yet), as received: pauses not
        applied, what has not arrived silent."""
        first = max(first, self.taken)
        if end <= first:
            return b""
        pcm = bytes(self.channels[channel].buffer[2 * (first - self.taken):2 * (end - self.taken)])
        return pcm + bytes(2 * (end - first) - len(pcm))

    def take(self, until: int) -> bytes:
        """The interleaved stereo frames from the last take up to frame `until`."""
        count = until - self.taken
        if count <= 0:
            return b""
        out = bytearray(4 * count)
        for index, ch in enumerate(self.channels):
            data = ch.buffer[:2 * count]
            del ch.buffer[:2 * count]
            if len(data) < 2 * count:
                data.extend(bytes(2 * count - len(data)))
            out[2 * index::4] = data[0::2]
            out[2 * index + 1::4] = data[1::2]
        for first, end in self.mutes:
            lo, hi = max(first, self.taken), min(until if end is None else end, until)
            if hi > lo:
                out[4 * (lo - self.taken):4 * (hi - self.taken)] = bytes(4 * (hi - lo))
        self.mutes = [m for m in self.mutes if m[1] is None or m[1] > until]
        self.taken = until
        return bytes(out)
