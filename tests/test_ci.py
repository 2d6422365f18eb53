"""CI (.ci/run) runs what the README tells a newcomer to run, in a fresh virtual environment."""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def readme_setup_commands() -> list[str]:
    section = (ROOT / "README.md").read_text().split("## Set up and test", 1)[1]
    return re.search(r"```bash\n(.*?)```", section, re.S).group(1).strip().splitlines()


def test_ci_runs_the_readmes_set_up_and_test_commands_in_a_fresh_venv():
    commands = readme_setup_commands()
    assert commands == ["pip install -r requirements.txt", "python -m pytest -q"]
    script = (ROOT / ".ci" / "run").read_text().splitlines()
    activated = script.index('source "$venv/bin/activate"')
    assert script[activated - 1] == 'python -m venv "$venv"'
    ran = [line.replace("pip install -q ", "pip install ")  # -q only quietens pip
           for line in script[activated + 1:] if not line.startswith(("#", "export"))]
    assert ran == commands  # the same commands, in the same order, once the venv is active
