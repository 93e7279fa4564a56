import threading
import time

import pytest

from feature_pipeline_dagster.core.engine.stream import prefetch


def test_items_arrive_in_order_and_the_producer_runs_ahead():
    produced = []

    def items():
        for i in range(5):
            produced.append(i)
            yield i

    stream = prefetch(items(), depth=2)
    assert next(stream) == 0
    time.sleep(0.2)
    assert len(produced) >= 3  # one consumed, two waiting: bounded by depth
    assert list(stream) == [1, 2, 3, 4]


def test_producer_errors_reraise_in_the_consumer():
    def items():
        yield 1
        raise KeyError("boom")

    with pytest.raises(KeyError, match="boom"):
        list(prefetch(items()))


def test_closing_early_stops_the_producer():
    stopped = threading.Event()

    def items():
        try:
            for i in range(10**9):
                yield i
        finally:
            stopped.set()

    stream = prefetch(items(), depth=1)
    assert next(stream) == 0
    stream.close()
    assert stopped.wait(5)
