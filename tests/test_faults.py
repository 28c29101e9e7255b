"""Every row of the fault matrix (``bench/faults.py``) on the real broker: whatever the fault,
no frame that entered is lost and no worker ends in a crash loop."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bench.faults import SCENARIOS

pytestmark = [pytest.mark.broker, pytest.mark.slow]


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_fault_matrix_row(scenario: str, broker: Any, tmp_path: Path) -> None:
    rows = SCENARIOS[scenario](broker, tmp_path)
    assert rows, f"{scenario} produced no row"
    for row in rows:
        print(f"\n{row}")
        if row.note.startswith("not measurable here"):
            pytest.skip(row.note)
        assert row.sent > 0, row
        assert row.lost == 0, row
        assert row.crash_loops == 0, row
