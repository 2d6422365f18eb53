"""The app in a real browser: a ``streamlit run app.py`` subprocess, Debian's Chromium through Playwright,
and the few DOM facts the browser tests and the bench scripts rely on.

Shared by ``tests/e2e/`` (through its conftest) and ``bench/load_check.py``, ``bench/startup_time.py`` and
``bench/screenshots.py`` (which put this folder on ``sys.path``).  Playwright drives the system Chromium
(``/usr/bin/chromium``; ``playwright install`` is never needed): with no Chromium, ``find_chromium()`` is None.

Streamlit facts used here (checked against Streamlit 1.67):
  * ``[data-testid=stApp]`` carries ``data-test-script-state`` (``running`` / ``notRunning``) and
    ``data-test-connection-state`` (``CONNECTED`` once the websocket is up);
  * an element created with ``key=K`` sits in a container with the class ``st-key-K`` (while a rerun
    replaces it, the old one may stay beside it, hidden and marked ``data-retained``);
  * a Plotly chart is a ``.js-plotly-plot`` div whose ``data`` / ``layout`` are Plotly's own objects;
  * an uncaught exception is ``[data-testid=stException]``, ``st.error`` is ``[data-testid=stAlertContentError]``,
    and Streamlit's own messages ("Page not found", connection lost) are ``[role=dialog]``.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts"
VIEWPORT = {"width": 1280, "height": 900}
FIRST_LOAD_MS = 120_000  # the first visitor loads the model and samples: generous on a busy 2-core machine
LOAD_MS = 60_000
#: Headless, and nothing that phones home: on a closed network Chromium's background requests are refused.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
#: page -> (its URL path, its st.title, the keys of the charts it draws on first load). The default page is
#: served at the root only: Streamlit answers /home with a "Page not found" dialog. About has a table, no chart.
PAGES = {
    "home": ("", "PathMNIST Diffusion Studio", ["home_grid"]),
    "forward": ("forward", "Forward diffusion", ["fwd_grid", "fwd_hist", "fwd_curves"]),
    "reverse": ("reverse", "Reverse denoising", ["rev_animation", "rev_step"]),
    "steer": ("steer", "Steer tissue", []),  # STEER_CHARTS with a tissue-conditional model; a message otherwise
    "train": ("train", "Train", []),  # the loss chart appears once a run starts
    "quiz": ("quiz", "Real or generated?", []),  # its round appears once the first generated patches are made
    "compare": ("compare", "Compare", ["cmp_pairs", "cmp_memo"]),
    "about": ("about", "About this model", []),
}
NAV_TITLES = ["Home", "Forward diffusion", "Reverse denoising", "Steer tissue", "Train", "Real or generated?",
              "Compare", "About / model card"]
#: The charts the Steer tissue page draws with a tissue-conditional model (the tests' tiny model is unconditional)
STEER_CHARTS = ["steer_sdedit", "steer_strengths", "steer_inpaint", "steer_morph", "steer_tissues"]


def find_chromium() -> str | None:
    """Path of the system Chromium, or None."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    return "/usr/bin/chromium" if Path("/usr/bin/chromium").is_file() else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_tiny_model(folder: Path, num_classes: int | None = None) -> Path:
    """The paper's small network with T = 20 (as in tests/test_app_pages.py): every page renders in about a second.
    With ``num_classes``, a tissue-conditional one (5 DPM-Solver++ steps recommended)."""
    import torch

    from ddpm.checkpoints import make_config, save_checkpoint
    from ddpm.schedules import ScheduleConfig
    from ddpm.unet import UNetConfig, build_unet

    torch.manual_seed(0)
    cfg = UNetConfig(architecture="seed", channel_mults=(1, 2), num_res_blocks=1, attention_resolutions=(),
                     num_classes=num_classes)
    extra = {"sampling": {"sampler": "dpmpp", "steps": 5, "guidance": 2.0}} if num_classes else {}
    save_checkpoint(folder, build_unet(cfg), make_config(cfg, ScheduleConfig(num_timesteps=20), preset="seed", **extra))
    return folder


class AppServer:
    """``streamlit run app.py`` on a free port; ``env`` is added to this process's environment, ``repo`` is the
    checkout whose app.py runs (this one by default; another, e.g. a git worktree of an older commit, to compare).

    ``start()`` returns once ``/_stcore/health`` answers (the seconds it took are ``ready_s``);
    ``stop()`` terminates the process (then kills it) and waits for it.  The log goes to ``log_path``.
    """

    def __init__(self, env: dict[str, str] | None = None, port: int | None = None, log_path: Path | None = None,
                 repo: Path = REPO):
        self.port = port or free_port()
        self.repo = Path(repo)
        self.env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", **(env or {})}
        self.log_path = log_path
        self.command = ["streamlit", "run", "app.py", "--server.headless", "true", "--server.port", str(self.port),
                        "--server.address", "127.0.0.1", "--server.fileWatcherType", "none"]
        self.proc: subprocess.Popen | None = None
        self._log = None
        self.started_at = 0.0
        self.ready_s: float | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None, "the server is not started"
        return self.proc.pid

    def start(self, timeout: float = 120.0) -> "AppServer":
        self._log = open(self.log_path, "w") if self.log_path else None
        self.started_at = time.perf_counter()
        self.proc = subprocess.Popen([sys.executable, "-m", *self.command], cwd=self.repo, env=self.env,
                                     stdout=self._log or subprocess.DEVNULL, stderr=subprocess.STDOUT)
        deadline = self.started_at + timeout
        while time.perf_counter() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"streamlit exited with code {self.proc.returncode} before answering; "
                                   f"see {self.log_path or 'its output'}")
            try:
                with urllib.request.urlopen(f"{self.url}/_stcore/health", timeout=2) as response:
                    if response.status == 200:
                        self.ready_s = time.perf_counter() - self.started_at
                        return self
            except OSError:
                pass
            time.sleep(0.1)
        self.stop()
        raise TimeoutError(f"streamlit did not answer on port {self.port} within {timeout:.0f} s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> "AppServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def process_tree_rss_mb(pid: int) -> float:
    """Resident memory (VmRSS) of a process and all its descendants, in MiB, from /proc."""
    total_kb, todo, seen = 0, [pid], set()
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.add(p)
        try:
            status = Path(f"/proc/{p}/status").read_text()
            total_kb += next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")), 0)
            for task in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
    return total_kb / 1024


# ---- DOM helpers: plain JavaScript, usable from Playwright's sync and async APIs alike ------------
#: Has the last script run finished, on a connected session?
JS_IDLE = """() => { const a = document.querySelector('[data-testid=stApp]');
  return !!a && a.dataset.testScriptState === 'notRunning' && a.dataset.testConnectionState === 'CONNECTED' }"""
#: A chart's image sources (data URIs) and annotation texts: what a viewer of an image chart sees.
JS_IMAGE_CHART = """key => { const g = document.querySelector('.st-key-' + key + ':not([data-retained]) .js-plotly-plot');
  return g && g.data ? {sources: g.data.map(t => t.source || null),
                        annotations: (g.layout.annotations || []).map(a => a.text)} : null }"""
#: Number of points in the first trace of a chart, or -1 while it is not drawn.  Plotly.js's computed
#: trace (_fullData) is read: the figure's own x may still be the base64 {dtype, bdata} that Plotly decodes.
JS_POINTS = """key => { const g = document.querySelector('.st-key-' + key + ':not([data-retained]) .js-plotly-plot');
  const t = g && g._fullData && g._fullData[0];
  return t && t.x ? t.x.length : -1 }"""
#: Texts of exceptions, st.error boxes and dialogs (the app opens none; Streamlit's "Page not found" is one).
JS_ERRORS = """() => [...document.querySelectorAll(
  '[data-testid=stException], [data-testid=stAlertContentError], [role=dialog]')].map(e => e.innerText.slice(0, 500))"""
#: Texts of the sidebar navigation links.
JS_NAV = """() => [...document.querySelectorAll('[data-testid=stSidebarNavLink]')]
  .map(e => e.innerText.split('\\n').filter(Boolean).pop())"""


def key_selector(key: str) -> str:
    """CSS selector of the element created with ``key=``; during a rerun Streamlit may keep the previous
    one hidden beside it, marked ``data-retained``."""
    return f".st-key-{key}:not([data-retained])"


def chart_selector(key: str) -> str:
    """CSS selector of a keyed Plotly chart once drawn."""
    return f"{key_selector(key)} .js-plotly-plot .svg-container"


def start_training_run(page, preset: str, steps: int, batch: int, sample_every: int | None = None) -> None:
    """On the Train page (Playwright's sync API): choose the settings in the sidebar and press Start training."""
    def keyed(key: str, inside: str):
        return page.locator(f"{key_selector(key)} {inside}")

    keyed("train_preset", "[role=combobox]").click()
    page.get_by_role("option", name=preset, exact=True).click()
    page.wait_for_function(JS_IDLE)
    for key, value in (("train_steps", steps), ("train_sample_every", sample_every)):
        if value is not None:
            keyed(key, "input").fill(str(value))
            keyed(key, "input").press("Enter")
            page.wait_for_function(JS_IDLE)
    slider, shown = keyed("train_batch", "input[type=range]"), keyed("train_batch", "[data-testid=stSliderThumbValue]")
    slider.focus()
    slider.press("Home")
    for _ in range(12):  # the batch sizes are 8, 16, 32, …: step right until the wanted one shows
        if shown.inner_text().strip() == str(batch):
            break
        slider.press("ArrowRight")
    assert shown.inner_text().strip() == str(batch), f"batch {batch} is not offered (capped by DDPM_MAX_BATCH?)"
    page.wait_for_function(JS_IDLE)
    keyed("train_start", "button").click()
