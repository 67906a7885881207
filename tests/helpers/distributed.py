"""Running the torchrun workers of `tests.helpers`, and what each rank of a worker saves."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

REPO = Path(__file__).resolve().parents[2]


def torchrun(worker: str, *args, timeout: int = 300, accelerate: bool = False) -> subprocess.CompletedProcess:
    """``torchrun --nproc_per_node 2 -m tests.helpers.<worker> ARGS`` from the repository root (gloo, 2 CPU
    processes), or with `accelerate`, ``accelerate launch --multi_gpu --num_processes 2 -m ...`` (the README's
    command; on CPU it starts the same 2 processes); skips the test where the launcher is not on PATH."""
    name = "accelerate" if accelerate else "torchrun"
    launcher = shutil.which(name) or pytest.skip(f"{name} not on PATH")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    how = ["launch", "--multi_gpu", "--num_processes", "2"] if accelerate else ["--standalone", "--nproc_per_node", "2"]
    cmd = [launcher, *how, "-m", f"tests.helpers.{worker}", *map(str, args)]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def save_rank_result(out: Path, result: dict) -> None:
    """Save `result` (with the world size) as ``out/rank<r>.pt``, then end the process group."""
    result["world_size"] = dist.get_world_size() if dist.is_initialized() else 1
    out.mkdir(parents=True, exist_ok=True)
    torch.save(result, out / f"rank{dist.get_rank() if dist.is_initialized() else 0}.pt")
    if dist.is_initialized():
        dist.destroy_process_group()
