"""Which samples a trainer reads back when it takes the samples partition (no broker; the
reading itself: tests/test_trainer_handover_e2e.py)."""

from __future__ import annotations

from pathlib import Path

from mlink.linkstore.store import LinkStore
from mlink.operators.sample_history import SampleHistory
from mlink.operators.trainer import LinkTrainer
from tests.test_operators import FAST, MODELS, SPECS, probe_result, truth


def test_the_first_sample_after_others_and_every_gap_call_for_the_history() -> None:
    history = SampleHistory()
    assert not history.gap_before(0)  # a new pipeline: nothing before it
    assert not history.gap_before(1) and not history.gap_before(2)
    assert history.gap_before(9)  # offsets 3-8 went to another worker
    assert not history.gap_before(10)
    assert not history.gap_before(7)  # a rebalance delivers again what it read since a commit
    assert not history.gap_before(8) and not history.gap_before(11)
    assert history.gap_before(13)
    restarted = SampleHistory()
    assert restarted.gap_before(10)  # a worker restarted at the committed offset


def test_samples_read_back_fill_the_buffer_without_calling_for_a_retrain() -> None:
    """They were the worker before's: its versions were trained on them. A first training
    (no full links yet) takes them at once."""
    data = truth(12)
    rows = [probe_result(f"s:{i}", {m: data[m][i] for m in MODELS}) for i in range(12)]
    trainer = LinkTrainer(SPECS, LinkStore(Path("unused")), FAST, warmup_frames=10, retrain_every=2)
    for row in rows[:10]:
        assert trainer.add(row, new=False)
    assert trainer.new_since_training == 0 and trainer.ready()  # the first links: at once
    trainer.announced(1)  # or trained before: no retrain until 2 new probes
    assert not trainer.ready()
    assert not trainer.add(rows[9])  # read back, then delivered again: one sample
    trainer.add(rows[10])
    trainer.add(rows[11])
    assert trainer.ready() and len(trainer.samples) == 12
