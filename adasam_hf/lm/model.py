"""The causal LM a run fine-tunes: a Hub id or local folder, or ``tiny-llama``; with LoRA adapters if asked.

``tiny-llama`` is a small Llama built from a config with seeded random weights and the packaged MiniLM tokenizer:
it needs no network, so the command and its tests run anywhere.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig

from ..app.errors import ConfigError
from ..app.models import load_pretrained, resolve_model_path
from ..app.preflight import check_model_path
from .arguments import DTYPES, TINY_LLAMA, LMModelArguments
from .data import special_token_ids

__all__ = ["TINY_LLAMA_CONFIG", "load_causal_lm"]

# Small enough to train in seconds on a CPU, shaped like Llama (grouped-query attention, SwiGLU, RMSNorm, RoPE).
TINY_LLAMA_CONFIG = dict(
    hidden_size=64, intermediate_size=176, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2
)


def load_causal_lm(model_args: LMModelArguments, max_seq_length: int = 512):
    """The tokenizer and the causal LM, with LoRA adapters when ``lora_r > 0`` (only they then train).

    Seed first (`set_seed`): the tiny Llama's weights and the adapters are random.

    Raises:
        ConfigError: The model cannot be loaded, or a LoRA target names no linear layer of it.
    """
    dtype = DTYPES[model_args.model_dtype]
    name = model_args.model_name_or_path
    if name == TINY_LLAMA:
        tokenizer = _load(name, AutoTokenizer.from_pretrained,
                          resolve_model_path(model_args.tokenizer_name or "minilm-l6"))
        bos, eos = special_token_ids(tokenizer)
        config = LlamaConfig(
            vocab_size=len(tokenizer), max_position_embeddings=max_seq_length, bos_token_id=bos,
            eos_token_id=eos, pad_token_id=tokenizer.pad_token_id, **TINY_LLAMA_CONFIG,
        )
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32 if dtype == "auto" else dtype)
    else:
        path = resolve_model_path(name)
        if path.startswith((".", "/", "~")) and not Path(path).expanduser().exists():
            raise ConfigError(f"model folder not found: {path} (or pass a Hub id, or {TINY_LLAMA})")
        check_model_path(path, name)
        tokenizer = _load(name, AutoTokenizer.from_pretrained, resolve_model_path(model_args.tokenizer_name or path))
        model = _load(name, AutoModelForCausalLM.from_pretrained, path, dtype=dtype)
    if tokenizer.pad_token is None:  # Llama's tokenizers have none; padded labels are -100 whatever the id
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    if model_args.lora_r > 0:
        model = _add_lora(model, model_args)
    return tokenizer, model


def _load(name: str, load, *args, **kwargs):
    return load_pretrained("causal LM", name, TINY_LLAMA, load, *args, **kwargs)


def _add_lora(model, model_args: LMModelArguments):
    from peft import LoraConfig, get_peft_model

    targets = model_args.target_modules
    if targets != "all-linear":
        linear = _linear_layer_names(model)
        unknown = [t for t in targets if t not in linear]
        if unknown:
            raise ConfigError(
                f"invalid lora_target_modules: {', '.join(map(repr, unknown))} is not a linear layer of "
                f"{model_args.model_name_or_path!r} (choose from: all-linear, {', '.join(sorted(linear))})"
            )
    config = LoraConfig(
        r=model_args.lora_r, lora_alpha=model_args.lora_alpha, lora_dropout=model_args.lora_dropout,
        target_modules=targets, task_type="CAUSAL_LM",
    )
    # peft keeps the adapters in float32 over a bfloat16 base (autocast_adapter_dtype), so their updates are exact.
    return get_peft_model(model, config)


def _linear_layer_names(model) -> set[str]:
    from transformers.pytorch_utils import Conv1D

    return {name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, (torch.nn.Linear, Conv1D))}
