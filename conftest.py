"""Loaded by pytest before tests/conftest.py and before any test module: the test run is offline.

``python -m pytest`` (the README's command) must make no network call however the shell is set up.
huggingface_hub reads these switches once, when it is first imported, so they are set here, before
anything can import it; the tests that exercise the Hub use a local stand-in (tests/hub_server.py),
which turns HF_HUB_OFFLINE off for itself.
"""
import os

OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",  # huggingface_hub: never contact the Hub (ddpm falls back to checkpoints/)
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "STREAMLIT_BROWSER_GATHER_USAGE_STATS": "false",  # the browser tests' app servers
}
os.environ.update(OFFLINE_ENV)
