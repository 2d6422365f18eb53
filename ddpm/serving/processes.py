"""What every child process of the server shares: it must not outlive the server."""
from __future__ import annotations

import os
import threading
import time

WATCH_EVERY_S = 0.5


def watch_parent(parent_pid: int, name: str, every: float = WATCH_EVERY_S) -> threading.Thread:
    """A started daemon thread that ends this process at once when ``parent_pid`` is no longer its parent (a killed
    server's children are handed to init: nobody can read their results any more)."""

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(every)
        os._exit(1)

    thread = threading.Thread(target=watch, daemon=True, name=name)
    thread.start()
    return thread
