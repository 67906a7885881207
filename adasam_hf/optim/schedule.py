"""Which optimizer steps pay for SAM's second pass: every step, every k-th, or at random (RST).

SAM doubles the cost of a step. Randomized switching (RST, Zhao et al., 2022, arXiv 2203.09962)
takes the SAM step with probability p and the base step (gradient at w, one pass) otherwise;
`interval=k` takes it every k-th step. Both cut the expected cost to (1 + p) or (1 + 1/k)
passes per step.

The decision is a pure function of (seed, step): every DDP rank and every resumed run makes the
same one, with no communication and nothing to checkpoint.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

SAM_MODES = ("full", "rst", "layer-sparse")


@dataclass(frozen=True)
class SAMSchedule:
    """`is_sam_step(step)` says whether optimizer step `step` (0-based) takes the SAM step.

    - mode "full" / "layer-sparse": every `interval`-th step (step % interval == 0);
    - mode "rst": additionally, with probability `rst_prob`, drawn from Random(f"{seed}:{step}").
    """

    mode: str = "full"
    rst_prob: float = 1.0
    interval: int = 1
    seed: int = 0

    def __post_init__(self):
        check_schedule(self.mode, self.rst_prob, self.interval)

    def is_sam_step(self, step: int) -> bool:
        if step % self.interval:
            return False
        if self.mode == "rst" and self.rst_prob < 1.0:
            # Seeding with a string hashes it with SHA-512: the same draw on every process and
            # platform, independent of PYTHONHASHSEED and of how many draws came before.
            return random.Random(f"{self.seed}:{step}").random() < self.rst_prob
        return True


def check_schedule(mode: str, rst_prob: float, interval: int) -> None:
    if mode not in SAM_MODES:
        raise ValueError(f"Invalid sam_mode: {mode!r} (choose from: {', '.join(SAM_MODES)})")
    if not (isinstance(rst_prob, (int, float)) and 0.0 < rst_prob <= 1.0):
        raise ValueError(f"Invalid sam_rst_prob: {rst_prob!r} (must be in (0, 1])")
    if isinstance(interval, bool) or not isinstance(interval, int) or interval < 1:
        raise ValueError(f"Invalid sam_interval: {interval!r} (must be an integer >= 1)")
