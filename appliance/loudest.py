"""The loudest sample of a stretch of 16-bit PCM, found with bytes operations rather than a Python
step per sample: the live level meter and the waveform's column peaks use it, in the recorder
process, which does not load numpy."""

import array

# The high byte of a 16-bit sample → its magnitude bucket b: |sample| lies within [256 b, 256 b + 256],
# so the loudest sample is among those of the highest bucket present.
_BUCKET = bytes(range(128)) + bytes(range(127, -1, -1))
_BELOW = [bytes(range(k)) for k in range(128)]


def loudest(pcm: bytes, samples: array.array | None = None) -> int:
    """The largest magnitude among the little-endian s16 samples of `pcm` (0 for none);
    `samples` is the same audio as an array, when the caller has it already."""
    if len(pcm) < 2:
        return 0
    if samples is None:
        samples = array.array("h", pcm[:len(pcm) - len(pcm) % 2])
    buckets = pcm[1::2].translate(_BUCKET)
    low, high, kept = 0, 127, buckets   # the highest bucket present lies within [low, high]
    while low < high:
        middle = (low + high + 1) // 2
        above = kept.translate(None, _BELOW[middle])
        if above:
            low, kept = middle, above
        else:
            high = middle - 1
    top = bytes((low,))
    if buckets.count(top) > len(samples) // 8:
        return max(max(samples), -min(samples))     # many candidates (hiss, a steady tone): one pass
    peak, at = 0, buckets.find(top)
    while at >= 0:
        peak = max(peak, abs(samples[at]))
        at = buckets.find(top, at + 1)
    return peak
