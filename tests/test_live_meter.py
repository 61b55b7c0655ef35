"""The live state's level meter: the same figures as measuring every period sample by sample."""

import math
import random
from array import array

from appliance.live import FOLD_BYTES, LevelMeter, _dbfs
from appliance.loudest import loudest


def reference(periods: list[bytes]) -> dict:
    """Levels measured period by period, sample by sample."""
    squares = count = peak = 0
    for pcm in periods:
        samples = array("h", pcm)
        peak = max(peak, max(abs(s) for s in samples))
        squares += sum(s * s for s in samples)
        count += len(samples)
    return {"level_dbfs": _dbfs(math.sqrt(squares / count)), "peak_dbfs": _dbfs(peak),
            "clipping": peak >= 32000}


def test_the_peak_is_exact_at_every_byte_boundary_and_for_loud_tones():
    rng = random.Random(5)
    values = [0, 1, -1, 255, 256, 257, -255, -256, -257, 32767, -32768, -32000, 31999, 32000]
    cases = [[v] for v in values] + [values, [0] * 160, [-32768] * 7, [12000, -12000] * 200]
    cases += [[rng.randint(-32768, 32767) for _ in range(rng.randint(1, 900))] for _ in range(300)]
    cases += [[round(rng.gauss(0, sd)) for _ in range(160)] for sd in (1, 30, 3000) for _ in range(100)]
    for case in cases:
        case = [max(-32768, min(32767, v)) for v in case]
        samples = array("h", case)
        assert loudest(samples.tobytes(), samples) == max(abs(v) for v in case), case


def test_levels_match_a_sample_by_sample_meter_across_folds_and_readings():
    rng = random.Random(9)
    meter = LevelMeter()
    assert meter.read() == {"level_dbfs": None, "peak_dbfs": None, "clipping": False}
    for periods_per_reading in (1, 3, 25, 3 * FOLD_BYTES // 320):
        for sd in (0, 30, 3000, 40000):
            periods = [array("h", [max(-32768, min(32767, round(rng.gauss(0, sd)))) for _ in range(160)]).tobytes()
                       for _ in range(periods_per_reading)]
            for pcm in periods:
                meter.add(pcm)
            assert meter.read() == reference(periods)
    assert meter.read()["level_dbfs"] is None


def test_a_tone_reads_its_level_whatever_its_frequency_and_phase():
    # Half scale is -9.0 dBFS RMS; 1 and 2 kHz are whole fractions of the 8 kHz rate.
    for hz in (425.0, 1000.0, 1004.0, 2000.0, 3400.0):
        for phase in (0.0, 0.4, math.pi / 2):
            meter = LevelMeter()
            tone = [round(16384 * math.sin(2 * math.pi * hz * n / 8000 + phase)) for n in range(4000)]
            for start in range(0, len(tone), 320):
                meter.add(array("h", tone[start:start + 320]).tobytes())
            assert abs(meter.read()["level_dbfs"] + 9.0) <= 0.2, (hz, phase)
