"""Test doubles that record what the detector hands over (from txcmux.testing)."""

from txcmux.testing import (
    HalfCloseRecorder,
    HalfCloseRecordingFactory,
    Recorder,
    RecordingFactory,
)

__all__ = [
    "HalfCloseRecorder",
    "HalfCloseRecordingFactory",
    "Recorder",
    "RecordingFactory",
]
