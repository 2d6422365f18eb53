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


def quality_targets() -> str:
    """Each target of the quality issue, checked against bench/results/quality.json."""
    path = RESULTS / "quality.json"
    if not path.is_file():
        return "_Not measured yet: run `python bench/quality.py`._"
    table = json.loads(path.read_text())
    rows, floor = table["rows"], table["floor"]
    ddpm, fast, seed = rows.get("default DDPM all steps"), rows.get("default DPM-Solver++ 20"), rows.get("seed (paper) DDPM 200")
    best = ddpm or fast
    verdict = lambda ok: "met" if ok else "**missed**"  # noqa: E731
    lines = []
    if ddpm:
        lines.append(f"- FD within 3× the floor at DDPM over all steps: {ddpm['fd']:.3g} vs 3 × {floor['fd']:.3g} = "
                     f"{3 * floor['fd']:.3g}: {verdict(ddpm['fd'] <= 3 * floor['fd'])}.")
    else:
        lines.append("- FD within 3× the floor at DDPM over all steps: the DDPM row is not measured yet"
                     + (f"; with DPM-Solver++ 20 the FD is {fast['fd']:.3g} against a floor of {floor['fd']:.3g}." if fast else "."))
    if ddpm and fast:
        lines.append(f"- DPM-Solver++ 20 within 10% of that FD at ≥ 5× less time: FD {fast['fd']:.3g} vs {ddpm['fd']:.3g}, "
                     f"{ddpm['seconds_per_1000'] / fast['seconds_per_1000']:.1f}× faster: "
                     f"{verdict(fast['fd'] <= 1.1 * ddpm['fd'] and ddpm['seconds_per_1000'] >= 5 * fast['seconds_per_1000'])}.")
    if best:
        lines += [f"- Recall ≥ 0.5: {best['recall']:.3g}: {verdict(best['recall'] >= 0.5)}.",
                  f"- No sample a near-copy of a training patch: copy share {best['memorization_share']:.3g} "
                  f"(floor {floor['memorization_share']:.3g}): {verdict(best['memorization_share'] == 0)}.",
                  f"- Class histogram within 0.1 TV of the training prior: {best['class_tv']:.3g}: {verdict(best['class_tv'] <= 0.1)}."]
    if best and seed:
        lines.append(f"- The `seed` row far worse than the default: FD {seed['fd']:.3g} vs {best['fd']:.3g}, recall "
                     f"{seed['recall']:.3g} vs {best['recall']:.3g}: {verdict(seed['fd'] > 1.2 * best['fd'])}.")
    return "\n".join(lines)


def block(name: str) -> str:
    if name == "quality_targets":
        return quality_targets()
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
