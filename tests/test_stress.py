"""Nothing else the box does costs a recording: `bench/stress` in small, as a test. Two analog lines
and a SIP trunk record calls while web clients search, export, stream status and draw waveforms
flat out in a process of their own and another process holds a read transaction open."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_every_call_is_recorded_whole_while_the_web_ui_and_a_long_reader_load_the_catalogue(tmp_path):
    subprocess.run([sys.executable, str(ROOT / "bench" / "stress"), "--calls", "2", "--sip-calls", "2",
                    "--hold", "10", "--loaded-only", "--out", str(tmp_path)], check=True, timeout=300,
                   capture_output=True)
    [loaded] = json.loads((tmp_path / "results.json").read_text())
    assert loaded["analog_started"] == loaded["analog_rows"] == loaded["analog_whole"] == 4
    assert loaded["sip_ok"] and loaded["sip_rows"] == loaded["sip_complete"] == 2
    assert loaded["rows_final"] and loaded["no_audio"] == 0
    assert loaded["max_ms"] < 1000          # the pre-roll reaches the disk as the call starts
    assert loaded["web"]["search"] > 10 and loaded["web"]["exports"] > 0 and loaded["web"]["status"] > 10
