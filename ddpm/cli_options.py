"""What the commands of ``python -m ddpm`` share: option names, the help layout, reproducibility flags, output checks.

Nothing here imports torch at module level, so that ``--help`` answers at once.
"""
from __future__ import annotations

import argparse
import math
import re
import sys
import tempfile
from pathlib import Path

PRESET_NAMES = ("seed", "small", "large", "gpu")  # ddpm.presets.PRESETS, named here so that --help imports no torch
SAMPLER_NAMES = ("ddpm", "ddim", "dpmpp")  # ddpm.samplers.SAMPLERS
PRECISIONS = ("auto", "bf16", "fp32")
MAX_SEED = 2**32 - 1  # NumPy's seed range; the trainer's derived seeds (seed · 1,000,003 + epoch) stay within torch's
DEVICE_PATTERN = re.compile(r"auto|cpu|cuda(:[0-9]+)?")


# ---- argparse types: each option's bound lives here, and a value outside it is a usage error (exit 2) -------------
def _whole_number(text: str, low: int, high: int | None) -> int:
    allowed = f"a whole number from {low} to {high}" if high is not None else f"a whole number ≥ {low}"
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be {allowed}, got {text!r}") from None
    if value < low or (high is not None and value > high):
        raise argparse.ArgumentTypeError(f"must be {allowed}, got {text!r}")
    return value


def positive_int(text: str) -> int:
    """argparse type: a whole number ≥ 1 (threads, epochs of the encoder)."""
    return _whole_number(text, 1, None)


def timestep_int(text: str) -> int:
    """argparse type: a timestep, a whole number from 0 to 999 (the largest T a config may have, minus one)."""
    return _whole_number(text, 0, 999)


def seed_int(text: str) -> int:
    """argparse type: a seed, a whole number from 0 to MAX_SEED."""
    return _whole_number(text, 0, MAX_SEED)


def finite_positive_float(text: str) -> float:
    """argparse type: a finite number > 0 (epochs, minutes, seconds, megabytes); nan, inf and 0 are refused."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text!r}")
    return value


def device_name(text: str) -> str:
    """argparse type: auto, cpu, cuda or cuda:N (checked without importing torch)."""
    if not DEVICE_PATTERN.fullmatch(text):
        raise argparse.ArgumentTypeError(f"must be auto, cpu, cuda or cuda:N, got {text!r}")
    return text


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
    p.add_argument("--threads", type=positive_int, help="CPU threads for torch (default: torch's choice)")


def add_sampling_options(p: argparse.ArgumentParser) -> None:
    """--sampler, --steps, --eta, --class, --guidance and --guidance-interval; unset, each takes the checkpoint's
    recommendation (``sampling_settings``)."""
    p.add_argument("--sampler", choices=SAMPLER_NAMES, help="DDPM (ancestral, all T steps), DDIM or DPM-Solver++(2M) "
                   "(default: the checkpoint's recommended one, else dpmpp)")
    p.add_argument("--steps", type=int, help="sampler steps (DDPM always uses all T; default: the checkpoint's "
                   "recommended, else 20)")
    p.add_argument("--eta", type=float, help="DDIM's η in [0, 1]: 0 deterministic, 1 ancestral (DDIM only; default 0)")
    p.add_argument("--class", dest="tissue", metavar="NAME|INDEX|prior",
                   help="tissue-conditional models: the tissue to generate (a name such as 'adipose', a unique prefix, "
                        "an index 0-8) or 'prior' (default: draws from the training split's class frequencies)")
    p.add_argument("--guidance", type=float, help="classifier-free guidance scale s: uncond + s·(cond − uncond); 0 = "
                   "unconditional, 1 = plain conditional, at most 6 (default: the checkpoint's recommended, chosen by its "
                   "guidance sweep)")
    p.add_argument("--guidance-interval", nargs=2, type=timestep_int, metavar=("LO", "HI"),
                   help="apply the guidance only at timesteps LO ≤ t ≤ HI, the plain conditional prediction elsewhere "
                        "(one network pass instead of two there); 0 T-1 = every step (default: the checkpoint's "
                        "recommended band, chosen by its sweep)")


def sampling_settings(args: argparse.Namespace, ckpt, n: int, seed: int):
    """(SamplingSpec, classes (n,) tensor or None): the checkpoint's recommendation with the options given on top.
    An out-of-range setting, or --class or --guidance for an unconditional model, is a ValueError."""
    from .pipeline import PRIOR, resolve_classes

    if n < 1:
        raise ValueError(f"-n must be at least 1, got {n}")
    num_classes = ckpt.model_config.num_classes
    band = getattr(args, "guidance_interval", None)
    if num_classes is None and (args.guidance is not None or band is not None or args.tissue not in (None, PRIOR)):
        raise ValueError(f"{ckpt.source} is an unconditional model: --class, --guidance and --guidance-interval need "
                         "a tissue-conditional one")
    T = ckpt.schedule.num_timesteps
    if args.steps is not None and not 1 <= args.steps <= T:
        raise ValueError(f"--steps: steps must be between 1 and T = {T}, got {args.steps}")
    if band is not None and not band[0] <= band[1] < T:
        raise ValueError(f"--guidance-interval: need 0 ≤ LO ≤ HI ≤ T − 1 = {T - 1}, got {band[0]} {band[1]}")
    spec = ckpt.sampling.replace(sampler=args.sampler, steps=args.steps, guidance=args.guidance, eta=args.eta,
                                 guidance_interval=None if band is None else tuple(band))
    spec.timesteps(T)  # DDPM with a step count other than T is refused before any work
    return spec, resolve_classes(num_classes, n, args.tissue, seed)


def describe_sampling(spec, classes, tissue: str | None) -> str:
    conditional = classes is not None
    return spec.describe(conditional) + (f", class {tissue or 'prior'}" if conditional else ", unconditional")


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
