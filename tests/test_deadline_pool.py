"""``DeadlinePool``: a task gets its time limit from the moment it starts, and one that overruns is abandoned then."""

from __future__ import annotations

import threading
import time

import pytest

from qualiclip_infer.deadline_pool import DeadlinePool, TaskTimeout, current_label


def test_a_task_that_overruns_is_abandoned_at_its_limit_and_the_pool_goes_on():
    release = threading.Event()
    with DeadlinePool(1, timeout=1.0) as pool:
        stuck = pool.submit(release.wait, 60)
        started = time.monotonic()
        with pytest.raises(TaskTimeout, match="took longer than 1 s"):
            pool.result(stuck)
        waited = time.monotonic() - started
        assert pool.result(pool.submit(current_label, label="next")) == "next"  # a new thread took over
    release.set()
    assert 1.0 <= waited < 1.8  # at the limit, not long after it


def test_the_limit_counts_from_the_start_not_from_the_queue():
    with DeadlinePool(1, timeout=1.0) as pool:
        first = pool.submit(time.sleep, 0.7)
        second = pool.submit(time.sleep, 0.7)  # queued 0.7 s behind the first: 1.4 s after submission, 0.7 s its own
        assert pool.result(first) is None and pool.result(second) is None
