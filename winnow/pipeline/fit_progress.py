"""Progress of a long fit that runs in a worker (the DataRater's meta-training), shown by the driver.

A task calls `report(path, text)` with a path inside its stage's folder. In a Dask worker that becomes an
event on the scheduler (`Worker.log_event`), and the engine, while that stage fits, prints each event whose
path lies in the stage's folder under the stage's name (`shown`). Outside a worker (a fit in the driver's
own process) nothing is sent. The path is the filter because one scheduler may serve several runs.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from typing import Any

TOPIC = "winnow-fit-progress"


def report(path: str | os.PathLike, text: str) -> None:
    """Send `text` to the driver of the run whose stage folder holds `path` (a no-op outside a worker)."""
    from distributed import get_worker

    try:
        worker = get_worker()
    except ValueError:   # not in a worker
        return
    worker.log_event(TOPIC, {"path": os.path.abspath(path), "text": text})


@contextlib.contextmanager
def shown(client: Any, stage_dir: str | os.PathLike, show: Callable[[str], None]) -> Iterator[None]:
    """While inside, `show(text)` for every progress event sent from a path inside `stage_dir`."""
    prefix = os.path.join(os.path.abspath(stage_dir), "")

    def handler(event: tuple[float, Any]) -> None:
        message = event[1]
        if isinstance(message, dict) and str(message.get("path", "")).startswith(prefix):
            show(str(message.get("text", "")))

    client.subscribe_topic(TOPIC, handler)
    try:
        yield
    finally:
        client.unsubscribe_topic(TOPIC)
