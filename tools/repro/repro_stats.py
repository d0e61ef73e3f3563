"""What the repro scripts share: their progress lines and the seeds' 95 % t-intervals."""

from __future__ import annotations

import math
import statistics
import sys
import time

# two-sided 95 % t quantiles by degrees of freedom (seeds - 1)
T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


def say(msg: str) -> None:
    from tqdm import tqdm

    tqdm.write(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr)  # above the bars, not through them


def ci(values: list[float]) -> tuple[float, float]:
    """Mean and the half-width of a 95 % t-interval over the values (0 for a single value)."""
    m = statistics.mean(values)
    if len(values) < 2:
        return m, 0.0
    return m, T95.get(len(values) - 1, 1.96) * statistics.stdev(values) / math.sqrt(len(values))
