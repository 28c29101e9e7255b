"""``bench/soak.py``'s memory readings, on this process and constructed samples."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from bench.soak import slope_mb_per_min, tree_rss_mb


def test_a_process_tree_counts_its_children() -> None:
    alone = tree_rss_mb(os.getpid())
    assert alone > 1.0
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        for _ in range(50):  # until the child has started and shows in /proc
            if tree_rss_mb(os.getpid()) > alone + 1.0:
                break
            time.sleep(0.1)
        assert tree_rss_mb(os.getpid()) > alone + 1.0
    finally:
        child.kill()
        child.wait()


def test_the_slope_is_taken_over_the_second_half_only() -> None:
    warm = [{"t": 60.0 * i, "rss_mb": 100.0 + 50 * i} for i in range(5)]  # growth while warming
    flat = [{"t": 60.0 * i, "rss_mb": 300.0 + 0.5 * (i - 5)} for i in range(5, 10)]
    assert slope_mb_per_min(warm + flat) == pytest.approx(0.5)
    assert slope_mb_per_min(warm[:1]) != slope_mb_per_min(warm[:1])  # NaN: too few samples
