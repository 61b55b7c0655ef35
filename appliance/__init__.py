"""The call recorder: hook detection, notice, capture, spool, archive and catalogue."""

__version__ = "0.1.0"
