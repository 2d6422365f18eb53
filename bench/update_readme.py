"""Copy the benchmark results into README.md, between ``<!-- name -->`` and ``<!-- /name -->`` markers.

    python bench/update_readme.py

Each marker names a file: ``<!-- train_speed -->`` takes bench/results/train_speed.md, ``<!-- encoder -->``
is built from checkpoints/encoder/config.json.  A result file that does not exist yet leaves a line
saying which script writes it, so the README never shows a number no script produced.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
WRITERS = {"train_speed": "bench/train_speed.py", "quality": "bench/quality.py", "load_check": "bench/load_check.py",
           "startup_time": "bench/startup_time.py", "gpu_speed": "bench/gpu_speed.py",
           "screenshots": "bench/screenshots.py"}


def encoder_table() -> str:
    config = json.loads((ROOT / "checkpoints" / "encoder" / "config.json").read_text())
    m = config["metrics"]
    base = m["baseline"]
    return "\n".join([
        f"Tissue encoder: {m['parameters']:,} parameters, {m['epochs']} epochs ({m['train_seconds'] / 60:.0f} min on this machine's CPU).", "",
        "| split | accuracy | AUC |", "|---|---:|---:|",
        f"| validation | {m['val']['acc']:.3f} | {m['val']['auc']:.4f} |",
        f"| test (another centre) | {m['test']['acc']:.3f} | {m['test']['auc']:.4f} |",
        f"| {base['model']}, test | {base['test_acc']:.3f} | {base['test_auc']:.3f} |"])


def screenshots() -> str:
    order = ["home", "forward", "reverse", "train", "compare", "about"]
    shots = sorted((ROOT / "docs" / "screenshots").glob("*.png"), key=lambda p: (order + [p.stem]).index(p.stem))
    if not shots:
        return "_No screenshots yet: run `python bench/screenshots.py`._"
    return "\n".join(f"![{p.stem}](docs/screenshots/{p.name})" for p in shots)


def block(name: str) -> str:
    if name == "encoder":
        return encoder_table()
    if name == "screenshots":
        return screenshots()
    path = RESULTS / f"{name}.md"
    if path.is_file():
        return path.read_text().strip()
    return f"_Not measured yet: run `python {WRITERS.get(name, 'bench/' + name + '.py')}`._"


def main() -> None:
    readme = ROOT / "README.md"
    text = readme.read_text()
    pattern = re.compile(r"<!-- (\w+) -->\n(?:.*?<!-- /\1 -->\n)?", re.S)
    new = pattern.sub(lambda m: f"<!-- {m.group(1)} -->\n{block(m.group(1))}\n<!-- /{m.group(1)} -->\n", text)
    readme.write_text(new)
    print("README.md updated" if new != text else "README.md already up to date")


if __name__ == "__main__":
    main()
