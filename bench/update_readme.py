"""Copy the benchmark results into README.md, between ``<!-- name -->`` and ``<!-- /name -->`` markers.

    python bench/update_readme.py

Each marker names a file: ``<!-- train_speed -->`` takes bench/results/train_speed.md (``<!-- quiz -->`` takes
bench/results/quiz.md, written by ``python -m ddpm quiz-report``), ``<!-- encoder -->`` is built from
checkpoints/encoder/config.json.  A result file that does not exist yet leaves a line
saying which script writes it, so the README never shows a number no script produced.
"""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
WRITERS = {"train_speed": "bench/train_speed.py", "quality": "bench/quality.py", "load_check": "bench/load_check.py",
           "startup_time": "bench/startup_time.py", "gpu_speed": "bench/gpu_speed.py",
           "screenshots": "bench/screenshots.py", "guided_speed": "bench/guided_speed.py",
           "crowd_check": "bench/crowd_check.py", "batching_check": "bench/batching_check.py",
           "request_cost": "bench/request_cost.py", "server_memory": "bench/server_memory.py",
           "browser_wait": "bench/browser_wait.py",
           "quiz": "-m ddpm quiz-report --db <the server's quiz.sqlite3> > bench/results/quiz.md"}


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
    order = ["home", "forward", "reverse", "steer", "train", "quiz", "compare", "about"]
    shots = sorted((ROOT / "docs" / "screenshots").glob("*.png"), key=lambda p: (order + [p.stem]).index(p.stem))
    if not shots:
        return "_No screenshots yet: run `python bench/screenshots.py`._"
    return "\n".join(f"![{p.stem}](docs/screenshots/{p.name})" for p in shots)


def quality_targets() -> str:
    """Each target of the quality issues, checked against bench/results/quality.json."""
    path = RESULTS / "quality.json"
    if not path.is_file():
        return "_Not measured yet: run `python bench/quality.py`._"
    sys.path.insert(0, str(Path(__file__).parent))
    from quality import (PREVIOUS_DEFAULT, Row, band_row, chosen_guidance, chosen_row, chosen_setting,  # noqa: E402
                         sweep_row)

    table = json.loads(path.read_text())
    rows, floor = table["rows"], table["floor"]
    chosen = chosen_row(table)
    if chosen is None:
        return "_The guidance sweep is not complete yet: run `python bench/quality.py`._"
    main_name = chosen.name
    main = rows[main_name]
    verdict = lambda ok: "met" if ok else "**missed**"  # noqa: E731
    lines = [f"At the default sampler and recommended setting ({main_name}, chosen by the sweeps' lowest FD; tissues "
             "drawn from the training prior):",
             f"- FD within 3× the real-vs-real floor: {main['fd']:.3g} vs 3 × {floor['fd']:.3g} = {3 * floor['fd']:.3g}: "
             f"{verdict(main['fd'] <= 3 * floor['fd'])}.",
             f"- Recall ≥ 0.5: {main['recall']:.3g}: {verdict(main['recall'] >= 0.5)}.",
             f"- Class histogram within 0.1 TV of the training prior: {main['class_tv']:.3g}: {verdict(main['class_tv'] <= 0.1)}.",
             f"- Conditional accuracy ≥ 0.8: {main['conditional_accuracy']:.3g}: {verdict(main['conditional_accuracy'] >= 0.8)}."]
    default_rows = {n: r for n, r in rows.items() if n.startswith("default ")}
    checked = [r["memorization_share"] for r in default_rows.values() if "memorization_share" in r]
    worst_copy = max(checked)
    lines.append(f"- No sample a near-copy of a training patch: largest copy share over the default's {len(checked)} rows "
                 f"{worst_copy:.3g} (floor {floor['memorization_share']:.3g}): {verdict(worst_copy == 0)}.")
    same_n = {n: r for n, r in default_rows.items() if r["n"] == main["n"]}
    best_name = min(same_n, key=lambda n: same_n[n]["fd"])
    lines.append(f"- The recommended sampler and steps within 10% of the best FD (among the default's rows at n = {main['n']}: {best_name}, "
                 f"{same_n[best_name]['fd']:.3g}): {main['fd']:.3g}: {verdict(main['fd'] <= 1.1 * same_n[best_name]['fd'])}.")
    previous = next((r for n, r in rows.items() if r.get("checkpoint", "").endswith(PREVIOUS_DEFAULT.split(":")[1])
                     or n.startswith("previous default")), None)
    if previous:
        lines.append(f"- Better than the previous default (unconditional, CPU-trained) on FD: {main['fd']:.3g} vs "
                     f"{previous['fd']:.3g}: {verdict(main['fd'] < previous['fd'])}.")
    setting = chosen_setting(table)
    if setting is not None:  # issue 17: the band, with the same weights, at no more cost per sample
        every = rows[sweep_row(chosen_guidance(table)).name]
        band_name = band_row(*setting).name
        band = rows[band_name]
        gain = 1 - band["fd"] / every["fd"]
        lines.append(f"- Guidance in a band alone ({band_name}): FD {band['fd']:.3g} vs {every['fd']:.3g} with guidance "
                     f"at every step, {100 * gain:.0f}% lower (target ≥ 15%): {verdict(gain >= 0.15)}.")
        gain = 1 - main["fd"] / every["fd"]
        lines.append(f"- The recommended setting ({main_name}): FD {100 * gain:.0f}% below guidance at every step; recall "
                     f"{main['recall']:.3g} (≥ 0.5: {verdict(main['recall'] >= 0.5)}), tissue mix TV {main['class_tv']:.3g} "
                     f"(≤ 0.05: {verdict(main['class_tv'] <= 0.05)}), conditional accuracy "
                     f"{main['conditional_accuracy']:.3g} (≥ 0.9: {verdict(main['conditional_accuracy'] >= 0.9)}).")
    seed = rows.get(Row("seed (paper)", "seed", "ddpm", None).name)
    if seed:
        lines.append(f"- The `seed` row far worse than the default: FD {seed['fd']:.3g} vs {main['fd']:.3g}, recall "
                     f"{seed['recall']:.3g} vs {main['recall']:.3g}: {verdict(seed['fd'] > 1.2 * main['fd'])}.")
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
