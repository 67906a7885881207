"""The causal-LM application: instruction tuning with SAM / AdaSAM (``scripts/finetune_lm.py``).

- `data`: Alpaca / Open-Platypus records, the prompt, tokenization with the loss on the response only;
- `arguments`, `model`: the command's arguments; the causal LM (``tiny-llama``, a folder or a Hub id), with LoRA;
- `run`: `parse_args`, `finetune_lm`, `main`.
"""

from .arguments import TINY_LLAMA, LMDataArguments, LMModelArguments
from .model import load_causal_lm
from .run import LM_CONFIG_DIR, build_parser, finetune_lm, main, parse_args

__all__ = [
    "LM_CONFIG_DIR",
    "TINY_LLAMA",
    "LMDataArguments",
    "LMModelArguments",
    "build_parser",
    "finetune_lm",
    "load_causal_lm",
    "main",
    "parse_args",
]
