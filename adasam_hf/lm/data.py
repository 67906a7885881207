"""Instruction data for causal-LM fine-tuning: records in the Alpaca / Open-Platypus layout.

A record has ``instruction``, an optional ``input`` (context) and ``output`` (the response). It becomes the Alpaca
prompt followed by the response and an end-of-sequence token; the loss is taken on the response tokens only (the
prompt's labels are -100), so the model learns to answer, not to repeat instructions.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path

import datasets

from ..app.errors import first_line
from ..app.models import HUB_UNREACHABLE, quiet_hub_retries

__all__ = [
    "FILE_EXTENSIONS",
    "IGNORE_INDEX",
    "InstructionDataError",
    "format_prompt",
    "load_instruction_data",
    "special_token_ids",
    "tokenize_instructions",
]

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100  # the label of a token the loss skips (the prompt, the padding)
FILE_EXTENSIONS = (".json", ".jsonl")
REQUIRED_COLUMNS = ("instruction", "output")

_PROMPT = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:\n"
)
_PROMPT_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. Write a "
    "response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)


class InstructionDataError(RuntimeError):
    """The instruction data cannot be loaded or used (a missing file, a wrong layout, nothing left to train on)."""


def format_prompt(instruction: str, input: str | None = None) -> str:
    """The Alpaca prompt; the response follows it directly."""
    if input and input.strip():
        return _PROMPT_WITH_INPUT.format(instruction=instruction, input=input)
    return _PROMPT.format(instruction=instruction)


def load_instruction_data(
    train_file: str | os.PathLike | None = None,
    validation_file: str | os.PathLike | None = None,
    dataset_name: str | None = None,
    dataset_config_name: str | None = None,
    train_tasks: list[str] | None = None,
) -> datasets.DatasetDict:
    """A ``train`` split, and a ``validation`` split when one is given, from local JSON files, the train splits
    of packaged benchmarks, or a Hub dataset.

    Local files are a JSON array of records or JSON Lines. `train_tasks` builds records from the packaged train
    splits (`adasam_hf.lm.eval_tasks.training_records`: no evaluation document among them), shuffled once with a
    fixed seed so that ``--max_train_samples`` takes a mix of the tasks. The Hub is asked only for `dataset_name`;
    its ``validation`` split is used when it has one.

    Raises:
        InstructionDataError: A file is missing, unreadable or malformed; a record lacks a required column; the
            Hub dataset cannot be loaded.
    """
    if sum(x is not None for x in (train_file, dataset_name, train_tasks)) != 1:
        raise InstructionDataError("give exactly one of a train file (--train_file), packaged tasks (--train_tasks) "
                                   "and a Hub dataset (--dataset_name)")
    if train_tasks is not None:
        from .eval_tasks import training_records

        records, dropped = training_records(train_tasks)
        if dropped:
            logger.info(f"--train_tasks: left out {dropped} training question(s) that are also evaluation documents")
        raw = datasets.DatasetDict({"train": datasets.Dataset.from_list(records).shuffle(seed=0).flatten_indices()})
        source = {"train": f"packaged train splits of {', '.join(train_tasks)}"}
        if validation_file is not None:
            raw["validation"] = _read_json(validation_file)
            source["validation"] = str(validation_file)
    elif train_file is not None:
        files = {"train": train_file, "validation": validation_file}
        raw = datasets.DatasetDict({split: _read_json(path) for split, path in files.items() if path is not None})
        source = {split: str(path) for split, path in files.items() if path is not None}
    else:
        try:
            with quiet_hub_retries():
                hub = datasets.load_dataset(dataset_name, dataset_config_name)
        except HUB_UNREACHABLE as exc:
            raise InstructionDataError(
                f"cannot load the Hub dataset {dataset_name!r}: the HuggingFace Hub is unreachable "
                f"({type(exc).__name__}); offline, pass a local file with --train_file FILE.json"
            ) from exc
        except (FileNotFoundError, ValueError) as exc:
            raise InstructionDataError(f"cannot load the Hub dataset {dataset_name!r}: {first_line(exc)}") from exc
        if "train" not in hub:
            raise InstructionDataError(f"the Hub dataset {dataset_name!r} has no train split (splits: {list(hub)})")
        if validation_file is not None:
            hub["validation"] = _read_json(validation_file)
        raw = datasets.DatasetDict({s: hub[s] for s in ("train", "validation") if s in hub})
        source = {s: f"{dataset_name} ({s})" for s in raw}
        if validation_file is not None:
            source["validation"] = str(validation_file)
    for split, dataset in raw.items():
        _check_columns(dataset, source[split])
    return raw


def _read_json(path: str | os.PathLike) -> datasets.Dataset:
    path = Path(path)
    if path.suffix not in FILE_EXTENSIONS:
        raise InstructionDataError(
            f"unsupported data file {str(path)!r}: expected one of {', '.join(FILE_EXTENSIONS)} (Alpaca layout)"
        )
    if not path.is_file():
        raise InstructionDataError(f"data file not found: {path}")
    if _is_blank(path):  # the json loader fails on these in ways that name neither the file nor the cause
        raise InstructionDataError(f"{path}: no records (the file is empty)")
    # A local file loads at once: no progress bar, and no log line of a parse error that the message below repeats.
    bars, verbosity = datasets.is_progress_bar_enabled(), datasets.logging.get_verbosity()
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity(datasets.logging.CRITICAL)
    try:
        return datasets.load_dataset("json", data_files=str(path), split="train")
    except datasets.exceptions.DatasetGenerationError as exc:
        cause = exc.__cause__ or exc
        raise InstructionDataError(f"cannot read {path} as JSON or JSON Lines: {first_line(cause)}") from exc
    except ValueError as exc:  # an empty JSON array: "Instruction 'train' corresponds to no data"
        raise InstructionDataError(f"{path}: no records ({first_line(exc)})") from exc
    finally:
        datasets.logging.set_verbosity(verbosity)
        if bars:
            datasets.enable_progress_bars()


def _is_blank(path: Path) -> bool:
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            if block.strip():
                return False
    return True


def _check_columns(dataset: datasets.Dataset, source: str) -> None:
    missing = [c for c in REQUIRED_COLUMNS if c not in dataset.column_names]
    if missing:
        raise InstructionDataError(
            f"{source}: no {' or '.join(repr(c) for c in missing)} field; a record needs 'instruction', 'output' "
            f"and optionally 'input' (found: {', '.join(dataset.column_names) or 'none'})"
        )
    if len(dataset) == 0:
        raise InstructionDataError(f"{source}: no records")
    for column in (*REQUIRED_COLUMNS, "input"):
        if column not in dataset.column_names:
            continue
        feature = dataset.features[column]
        if getattr(feature, "dtype", None) not in ("string", "large_string", "null"):
            raise InstructionDataError(f"{source}: field {column!r} must be text, found {feature}")
        if column in REQUIRED_COLUMNS:
            empty = next((i for i, v in enumerate(dataset[column]) if v is None), None)
            if empty is not None:
                raise InstructionDataError(f"{source}: record {empty} has no {column!r} (null or missing)")


def special_token_ids(tokenizer) -> tuple[int | None, int | None]:
    """(bos, eos) ids: the tokenizer's own, else BERT-style [CLS] / [SEP] (the packaged MiniLM tokenizer)."""
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.cls_token_id
    eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
    return bos, eos


def tokenize_instructions(
    dataset_dict: Mapping[str, datasets.Dataset] | datasets.DatasetDict, tokenizer, max_seq_length: int
) -> datasets.DatasetDict:
    """``input_ids``, ``attention_mask`` and ``labels`` per record: [bos] prompt response [eos], cut to
    `max_seq_length`, labels -100 on bos and prompt. Records with no response token left are dropped.

    Prompt and response are tokenized apart, so the boundary between them is exact whatever the tokenizer merges.

    Raises:
        InstructionDataError: A split has no record with a response token within `max_seq_length`; a field that
            must be text is not.
    """
    bos, eos = special_token_ids(tokenizer)
    head, tail = [bos] if bos is not None else [], [eos] if eos is not None else []

    def encode(batch):
        n = len(batch["instruction"])
        inputs = batch.get("input") or [None] * n
        prompts = [format_prompt(i, x) for i, x in zip(batch["instruction"], inputs)]
        prompt_ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]
        response_ids = tokenizer(batch["output"], add_special_tokens=False)["input_ids"]
        out = {"input_ids": [], "attention_mask": [], "labels": []}
        for p, r in zip(prompt_ids, response_ids):
            ids = (head + p + r + tail)[:max_seq_length]
            prompt_len = min(len(head) + len(p), len(ids))
            out["input_ids"].append(ids)
            out["attention_mask"].append([1] * len(ids))
            out["labels"].append([IGNORE_INDEX] * prompt_len + ids[prompt_len:])
        return out

    encoded = {}
    for split, dataset in dataset_dict.items():
        _check_columns(dataset, split)
        tokens = dataset.map(encode, batched=True, remove_columns=dataset.column_names, desc=f"tokenizing {split}")
        # Position 0 predicts nothing (the loss shifts labels), so a kept record has a label after it.
        tokens = tokens.filter(lambda e: any(t != IGNORE_INDEX for t in e["labels"][1:]), desc=f"filtering {split}")
        if len(tokens) == 0:
            raise InstructionDataError(
                f"no {split} record keeps a response token within max_seq_length {max_seq_length}: the prompts "
                "fill it; raise --max_seq_length"
            )
        encoded[split] = tokens
    return datasets.DatasetDict(encoded)
