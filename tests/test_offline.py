"""``python -m pytest`` makes no network call, whatever the shell exports (the root conftest.py sets the switches)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from huggingface_hub import constants

from ddpm.checkpoints import load_checkpoint

ROOT = Path(__file__).resolve().parent.parent

# pytest.main is what `python -m pytest` runs; the audit hook sees every DNS lookup and connect of the process
AUDITED_PYTEST = textwrap.dedent("""
    import json, sys
    seen = []
    LOCAL = ("localhost", "127.0.0.1", "::1")
    def hook(event, args):
        if event == "socket.getaddrinfo" and args[0] not in LOCAL:
            seen.append(f"getaddrinfo {args[0]}")
        elif event == "socket.connect" and isinstance(args[1], tuple) and args[1][0] not in LOCAL:
            seen.append(f"connect {args[1][0]}")
    sys.addaudithook(hook)
    import pytest
    code = pytest.main(sys.argv[2:])
    open(sys.argv[1], "w").write(json.dumps({"code": int(code), "network": seen}))
""")


def test_the_shipped_default_model_loads_without_the_hub_in_a_test_run():
    assert constants.HF_HUB_OFFLINE
    ckpt = load_checkpoint("default")
    assert ckpt.source.startswith("shipped copy")


def test_pytest_makes_no_network_call_even_when_the_shell_allows_the_hub(tmp_path):
    # the shell of a developer who never heard of HF_HUB_OFFLINE (or set it to 0): without the root conftest,
    # loading "default" above would probe the Hub (a DNS lookup of huggingface.co) before falling back
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "DDPM_"))}
    env["HF_HUB_OFFLINE"] = "0"
    result = tmp_path / "result.json"
    test = "tests/test_offline.py::test_the_shipped_default_model_loads_without_the_hub_in_a_test_run"
    proc = subprocess.run([sys.executable, "-c", AUDITED_PYTEST, str(result), "-q", "-p", "no:cacheprovider", test],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    outcome = json.loads(result.read_text())
    assert outcome["network"] == []
    assert outcome["code"] == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
