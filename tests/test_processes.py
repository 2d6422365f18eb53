"""How the server starts its children (ddpm.serving.processes): forked from one forkserver that imported torch once,
each with the server's environment of the moment, none outliving the server."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from ddpm.serving.processes import child, context

ROOT = Path(__file__).resolve().parent.parent


def report_environment(conn, name: str) -> None:
    conn.send(os.environ.get(name))
    conn.close()


def test_a_child_has_the_servers_environment_of_the_moment_it_starts_not_the_forkservers(monkeypatch):
    def started_with(value: str) -> str | None:
        monkeypatch.setenv("DDPM_TEST_SETTING", value)
        receive, send = context().Pipe(duplex=False)
        process = child(report_environment, (send, "DDPM_TEST_SETTING"), "ddpm-test-child")
        process.start()
        send.close()
        try:
            return receive.recv()
        finally:
            process.join(30)

    assert started_with("first") == "first"  # the forkserver, if this started it, has "first"
    assert started_with("second") == "second"


def test_the_forkserver_preload_starts_no_thread_and_freezes_what_it_imported():
    """A fork keeps only the forking thread: the preload must leave the forkserver with one (numpy's OpenBLAS pool,
    the one thread an import starts, is held to none here; OpenBLAS stops it itself before a fork)."""
    code = "import gc, os, ddpm.serving.preload; print(len(os.listdir('/proc/self/task')), gc.get_freeze_count())"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={**os.environ, "OPENBLAS_NUM_THREADS": "1"},
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    threads, frozen = map(int, out.stdout.split())
    assert threads == 1
    assert frozen > 10_000  # torch's objects, out of the collector's reach: its writes would unshare their pages
