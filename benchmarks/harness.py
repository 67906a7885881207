"""What every benchmark measures the same way: the machine, this process's memory, step times, runs in a child
process, and the bytes an optimizer holds. Imports only the standard library at load, so ``--help`` stays fast."""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shlex
import subprocess
import sys
import time
from pathlib import Path

__all__ = [
    "OFFLINE_ENV", "REPO", "add_workload_flags", "cpu_model", "maxrss_bytes", "optimizer_bytes", "peak_rss_bytes",
    "print_result", "reset_peak_rss", "rss_bytes", "run_child", "step_timer", "tensor_bytes", "versions",
]

REPO = Path(__file__).resolve().parents[1]
# For children that load a packaged model: never wait on the Hub, never fork tokenizer threads.
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


# The machine: a time means little without it.


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo), else what `platform` knows."""
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown"


def versions() -> dict:
    """python, adasam_hf, torch, transformers, datasets, accelerate: the versions a run's results.json records."""
    from adasam_hf.app.results import software_versions

    return software_versions()


# This process's memory. VmHWM is the peak that `reset_peak_rss` can lower; ru_maxrss is kept for comparison.


def _proc_status_bytes(field: str) -> int | None:
    """A /proc/self/status figure in bytes; None off Linux."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def rss_bytes() -> int | None:
    """Resident memory now (VmRSS); None off Linux."""
    return _proc_status_bytes("VmRSS")


def maxrss_bytes() -> int:
    """Peak resident memory as getrusage reports it (ru_maxrss, KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def peak_rss_bytes() -> int:
    """Peak resident memory (VmHWM; ru_maxrss off Linux)."""
    peak = _proc_status_bytes("VmHWM")
    return peak if peak is not None else maxrss_bytes()


def reset_peak_rss() -> bool:
    """Lower the peak (VmHWM and ru_maxrss) to the current RSS, so the next peak is the next phase's own; False where
    the kernel does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


# Step times.


def step_timer(model=None):
    """A TrainerCallback that times every optimizer step, on_step_begin -> on_step_end, into ``.times`` (seconds).
    Given `model`, it also counts the model's train-mode forwards in each step into ``.forwards`` (2 for a SAM step,
    1 for a plain one): the check that a step did what its name says."""
    from transformers import TrainerCallback

    count = [0]
    if model is not None:
        model.register_forward_hook(lambda m, i, o: count.__setitem__(0, count[0] + m.training))

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.times: list[float] = []
            self.forwards: list[int] = []

        def on_step_begin(self, *args, **kwargs):
            self._forwards0, self._t0 = count[0], time.perf_counter()

        def on_step_end(self, *args, **kwargs):
            self.times.append(time.perf_counter() - self._t0)
            self.forwards.append(count[0] - self._forwards0)

    return StepTimer()


# Child processes: each run in a fresh process, so its peak memory is its own. A script's child is the script itself,
# called with the hidden flag --_child WHAT..., the parent's --threads/--batch/--seq and any `more` flags.


def add_workload_flags(parser, batch: int = 16) -> None:
    """--threads, --batch, --seq (the knobs every benchmark has, with the same defaults but LM's batch), and the
    hidden --_child (``args.child``: the list of words the parent passed to `run_child`, None in the parent)."""
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=batch)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--_child", dest="child", nargs="+", metavar="WHAT", help=argparse.SUPPRESS)


def run_child(module: str, what: list, args, more=(), env: dict | None = None, launcher=()) -> dict:
    """Run ``python -m <module> --_child <what> <args' workload flags> <more>`` from the repository root (or
    ``<launcher> -m <module> ...``, e.g. torchrun's command) and return the JSON object on the last line of its stdout
    (see `print_result`). A failed child stops the benchmark with its command, exit code and stderr's tail."""
    argv = ["--_child", *what, "--threads", args.threads, "--batch", args.batch, "--seq", args.seq, *more]
    cmd = [*(launcher or [sys.executable]), "-m", module, *map(str, argv)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env={**os.environ, **(env or {})})
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"{proc.stderr[-3000:]}\nthe child `{shlex.join([Path(cmd[0]).name, *cmd[1:]])}` failed "
                         f"(exit code {proc.returncode}{'' if lines else ', no output'})")
    return json.loads(lines[-1])


def write_json(path: str | None, report: dict) -> None:
    """A benchmark's figures to `path` (its folder made), if a path was given."""
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(report, indent=1) + "\n")


def print_result(result: dict) -> None:
    """A child's answer: one JSON line, the last on stdout, which `run_child` reads."""
    print(json.dumps(result), flush=True)


# What an optimizer holds.


def tensor_bytes(tensors) -> int:
    """Bytes of these tensors' elements (parameters, typically)."""
    return sum(t.numel() * t.element_size() for t in tensors)


def _tensors_in(obj):
    import torch

    if isinstance(obj, torch.Tensor):
        yield obj.to_local() if hasattr(obj, "to_local") else obj  # a DTensor (FSDP2): this rank's shard
    elif isinstance(obj, dict):
        for value in obj.values():
            yield from _tensors_in(value)
    elif isinstance(obj, (list, tuple)):
        for value in obj:
            yield from _tensors_in(value)


def optimizer_bytes(opt) -> dict:
    """Bytes of the tensors `opt` holds between steps: ``state``, ``scratch`` (the SAM family's `scratch_tensors()`:
    the saved copy of w, AdaSAM's step tensors) and their ``total``. Each storage counts once, so a view or a tensor
    shared between two entries is not counted twice."""
    seen = set()

    def total(obj) -> int:
        n = 0
        for t in _tensors_in(obj):
            key = (t.untyped_storage().data_ptr(), t.device)
            if key not in seen:
                seen.add(key)
                n += t.untyped_storage().nbytes()
        return n

    state = total(dict(opt.state))
    scratch = total(opt.scratch_tensors() if hasattr(opt, "scratch_tensors") else [])
    return {"state": state, "scratch": scratch, "total": state + scratch}
