"""What the commands of ``python -m ddpm`` share: option names, the help layout, reproducibility flags, output checks.

Nothing here imports torch at module level, so that ``--help`` answers at once.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

PRESET_NAMES = ("seed", "small", "large", "gpu")  # ddpm.presets.PRESETS, named here so that --help imports no torch
SAMPLER_NAMES = ("ddpm", "ddim", "dpmpp")  # ddpm.samplers.SAMPLERS
PRECISIONS = ("auto", "bf16", "fp32")


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Each option's default after its help line (unless the line already says it), the examples kept as written."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text or action.default in (None, False, argparse.SUPPRESS) or not action.option_strings:
            return text
        return f"{text} (default: %(default)s)"


def examples(*lines: str) -> str:
    return "examples:\n" + "\n".join(f"  {line}" for line in lines)


def add_reproducibility(p: argparse.ArgumentParser) -> None:
    p.add_argument("--precision", choices=PRECISIONS, default="fp32", help="network precision: fp32 gives the same "
                   "images on any CPU; bf16 (or auto: bf16 where the hardware has it) is faster and differs in the last bits")
    p.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice)")


def writable_folder(folder: Path) -> None:
    """Check, before any work, that files can be written in ``folder``; a ValueError saying what to do if not.

    The check writes a temporary file (root passes every permission test, but not a read-only or virtual file
    system) and leaves nothing behind: folders it had to create are removed again.
    """
    created: list[Path] = []
    try:
        for parent in reversed([p for p in (folder, *folder.parents) if not p.exists()]):
            parent.mkdir()
            created.append(parent)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".ddpm-write-check-"):
            pass
    except OSError as err:
        raise ValueError(f"cannot write into {folder} ({err.strerror or err}); choose an --out in a folder you can "
                         "write to") from None
    finally:
        for parent in reversed(created):
            parent.rmdir()


def say_precision(args: argparse.Namespace, device) -> None:
    """Apply --threads and print the precision the network will run in (what decides bit-exact reproducibility)."""
    import torch

    from .device import use_bf16

    if args.threads:
        torch.set_num_threads(args.threads)
    bf16 = use_bf16(args.precision, device)
    note = "same images on any CPU for the same seed" if not bf16 else "faster; the last bits depend on the hardware"
    print(f"precision: {'bf16 autocast' if bf16 else 'fp32'} (--precision {args.precision}; {note}), "
          f"{torch.get_num_threads()} CPU thread(s)", file=sys.stderr)
