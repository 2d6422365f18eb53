"""How the server starts its child processes, and what every child shares: it must not outlive the server.

Children (sampling workers, training runs) are forked from a forkserver: a process of its own, started with the
first child, that imports torch and the code the children run once (``preload``) and then only forks. Each
child shares those pages with the forkserver and its siblings instead of holding its own copy of torch (about
150 MB each; bench/results/server_memory.md). The forkserver runs no thread of its own (``preload`` says why),
so a fork from it is as safe as a spawn; a fork of the server itself is not (torch's and Streamlit's threads do
not survive one). A child gets the server's environment of the moment it starts, as a spawned one would
(``child``). The forkserver ends when the server does (the end of a pipe only the server holds), and each child
ends when its parent changes (``watch_parent``).
"""
from __future__ import annotations

import gc
import logging
import multiprocessing as mp
import os
import threading
import time
from typing import Callable

WATCH_EVERY_S = 0.5
PRELOAD = "ddpm.serving.preload"  # imported once by the forkserver, before any fork

log = logging.getLogger(__name__)


def context() -> mp.context.BaseContext:
    """The multiprocessing context every child of the server is started from (its Process, Pipe and Event)."""
    if "forkserver" not in mp.get_all_start_methods():  # Windows: each child imports torch itself
        return mp.get_context("spawn")
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload([PRELOAD])  # used when the forkserver starts (the first child): set before then
    return ctx


def child(target: Callable[..., None], args: tuple, name: str) -> mp.process.BaseProcess:
    """A daemon child process of the server, to be started now, that runs ``target(*args)`` with the server's
    environment of this moment, as a spawned child would (a forked one has the forkserver's: the server's when
    the forkserver started)."""
    return context().Process(target=_with_environment, args=(dict(os.environ), target, *args), daemon=True, name=name)


def _with_environment(environment: dict[str, str], target: Callable[..., None], *args) -> None:
    os.environ.clear()
    os.environ.update(environment)
    target(*args)


def check_preloaded() -> None:
    """In a child: log a warning if its forkserver did not import ``PRELOAD`` (it ignores a module it cannot import,
    and imports from the server's working directory, not from the server's sys.path). What the preload froze
    is inherited by every child forked after it: none of it, no preload."""
    if "forkserver" in mp.get_all_start_methods() and gc.get_freeze_count() == 0:
        log.warning("this child was forked without %s, so it holds its own copy of torch (more memory): start the "
                    "server from the folder that holds the ddpm package, or put that folder on PYTHONPATH", PRELOAD)


def watch_parent(server_pid: int, name: str, every: float = WATCH_EVERY_S) -> threading.Thread:
    """A started daemon thread that ends this process at once when the server (``server_pid``) is gone: when this
    process's parent changes (the server, or the forkserver that ends with it, died: its children are handed to
    init, and nobody can read their results any more) or the server no longer exists."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent and _alive(server_pid):
            time.sleep(every)
        os._exit(1)

    thread = threading.Thread(target=watch, daemon=True, name=name)
    thread.start()
    return thread


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: it exists
        return True
    return True
