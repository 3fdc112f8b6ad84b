"""Durations in words for a reader, shared by every message that names a wait.

Contract: :func:`span` turns seconds into a short phrase, rounded up to the unit shown
(never "0 s": a wait that is nearly over still reads as one second); :func:`duration`
names a configured length exactly, in whole words ("60 minutes", "90 seconds").
"""

from __future__ import annotations

import math


def span(seconds: float) -> str:
    """A wait in words for a reader: ``7 s``, ``12 min``, ``5 h 3 min``."""
    seconds = max(1, math.ceil(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes = math.ceil(seconds / 60)
    if minutes < 60:
        return f"{minutes} min"
    return f"{minutes // 60} h {minutes % 60} min" if minutes % 60 else f"{minutes // 60} h"


def duration(seconds: float) -> str:
    """``3600`` as "60 minutes", ``90`` as "90 seconds"."""
    if seconds >= 60 and seconds % 60 == 0:
        minutes = int(seconds // 60)
        return f"{minutes} minute{'' if minutes == 1 else 's'}"
    return f"{seconds:g} second{'' if seconds == 1 else 's'}"
