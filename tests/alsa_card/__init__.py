"""A simulated capture sound card that overruns like a real one: the `testcard` ALSA plugin
(pcm_testcard.c, next to this file), built on first use with `cc` against libasound (Debian
packages `gcc` and `libasound2-dev`).

Its hardware pointer follows the monotonic clock and its samples come from a raw file, so a reader
that falls a buffer behind gets -EPIPE and loses that stretch of the line, as with a real card."""

import json
import os
import subprocess
import tempfile
from pathlib import Path

SOURCE = Path(__file__).with_name("pcm_testcard.c")
LIBRARY = "libasound_module_pcm_testcard.so"


def cache_dir() -> Path:
    """Where the built plugin is kept between runs (outside the source tree)."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "callrec-tests" / "alsa_card"


def build() -> Path:
    """The plugin's shared object, compiled again when its source is newer."""
    folder = cache_dir()
    library = folder / LIBRARY
    if library.exists() and library.stat().st_mtime >= SOURCE.stat().st_mtime:
        return library
    folder.mkdir(parents=True, exist_ok=True)
    # Built under a temporary name, then moved into place: a run beside this one never loads half a file.
    fd, partial = tempfile.mkstemp(dir=folder, suffix=".so")
    os.close(fd)
    try:
        result = subprocess.run(["cc", "-O2", "-Wall", "-shared", "-fPIC", "-o", partial, str(SOURCE), "-lasound"],
                                capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"cannot build the testcard ALSA plugin (needs the Debian packages gcc and "
                               f"libasound2-dev):\n{result.stderr}")
        os.replace(partial, library)
    finally:
        if os.path.exists(partial):
            os.unlink(partial)
    return library


def asoundrc(cards: dict[str, Path]) -> str:
    """ALSA configuration text: the plugin type, and one capture PCM per name reading its raw file
    (S16_LE interleaved, at whatever rate and channel count the reader opens it with)."""
    text = f"pcm_type.testcard {{ lib {json.dumps(str(build()))} }}\n"
    for name, infile in cards.items():
        text += f"pcm.{name} {{ type testcard infile {json.dumps(str(infile))} }}\n"
    return text


def alsa_config_path(folder: Path, cards: dict[str, Path], extra: str = "") -> str:
    """Write an asoundrc with these cards (and `extra` configuration) in `folder`; return the value
    for ALSA_CONFIG_PATH, the system's configuration first."""
    path = Path(folder) / "asoundrc-testcard"
    path.write_text(asoundrc(cards) + extra)
    return f"/usr/share/alsa/alsa.conf:{path}"
