"""Fixtures every part of the tests uses: the GLUE data (embedded, and the tasks behind ../shared) and a tiny BERT
checkpoint. Importable helpers are in `tests.helpers`."""

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def embedded_glue() -> Path:
    """RTE and MRPC as the package embeds them: there on every clone, so their tests never skip."""
    from adasam_hf.glue.data import EMBEDDED_GLUE_DIR

    return EMBEDDED_GLUE_DIR


@pytest.fixture(scope="session")
def glue_root() -> Path:
    """The original GLUE TSV files of the tasks not embedded (CoLA, SST-2, STS-B, WNLI, QNLI dev): $GLUE_DIR,
    else ../shared/glue beside the checkout."""
    path = Path(os.environ.get("GLUE_DIR") or REPO.parent / "shared" / "glue")
    if not (path / "STS-B" / "train.tsv").is_file():
        pytest.skip(f"GLUE TSV files of the tasks not embedded not found at {path} (set GLUE_DIR to a glue_data "
                    "folder)")
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A 2-layer, 32-wide BERT with the packaged MiniLM tokenizer: a real checkpoint folder that trains in
    milliseconds. Saved as a bare BertModel, like MiniLM, so the classifier head is new on load."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from adasam_hf.app.models import resolve_model_path

    path = tmp_path_factory.mktemp("tiny-bert")
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path("minilm-l6"))
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=128,
    )
    BertModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
