"""Tests for adasam_hf.glue.tasks and .data: the task table, the local TSV reader, Hub fallback and tokenization.

Expected values are written out here from the Hub schema and /work/shared/glue/README.md, not read from the
table under test, so a wrong fact in the table fails a test.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import datasets
import pytest
from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled

from adasam_hf.glue import data, tasks
from adasam_hf.glue.data import GlueFileNotFoundError, GlueFormatError, load_glue, read_glue_tsv, tokenize_glue
from adasam_hf.glue.tasks import GLUE_TASKS, GlueDataError, get_task

# The Hub's nyu-mll/glue schema: text columns and label names in id order (None: float regression label).
HUB_SCHEMA = {
    "cola": (["sentence"], ["unacceptable", "acceptable"]),
    "sst2": (["sentence"], ["negative", "positive"]),
    "mrpc": (["sentence1", "sentence2"], ["not_equivalent", "equivalent"]),
    "stsb": (["sentence1", "sentence2"], None),
    "qqp": (["question1", "question2"], ["not_duplicate", "duplicate"]),
    "mnli": (["premise", "hypothesis"], ["entailment", "neutral", "contradiction"]),
    "qnli": (["question", "sentence"], ["entailment", "not_entailment"]),
    "rte": (["sentence1", "sentence2"], ["entailment", "not_entailment"]),
    "wnli": (["sentence1", "sentence2"], ["not_entailment", "entailment"]),
}


def hub_features(task: str) -> datasets.Features:
    text, names = HUB_SCHEMA[task]
    label = datasets.Value("float32") if names is None else datasets.ClassLabel(names=names)
    return datasets.Features(
        {**{c: datasets.Value("string") for c in text}, "label": label, "idx": datasets.Value("int32")}
    )


def write_tsv(path: Path, lines: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def rte_dir(root: Path, train_rows=None, dev_rows=None) -> Path:
    """A tiny RTE folder in the original layout; returns the GLUE root."""
    header = "index\tsentence1\tsentence2\tlabel"
    train_rows = train_rows or [
        "0\tA man sleeps.\tA man is awake.\tnot_entailment",
        "1\tIt rains.\tIt is wet.\tentailment",
    ]
    dev_rows = dev_rows or ["0\tThe cat sat.\tA cat sat.\tentailment"]
    write_tsv(root / "RTE" / "train.tsv", [header, *train_rows])
    write_tsv(root / "RTE" / "dev.tsv", [header, *dev_rows])
    return root


# --------------------------------------------------------------------------------------------- task table


def test_table_matches_hub_schema_for_all_nine_tasks():
    assert sorted(GLUE_TASKS) == sorted(HUB_SCHEMA)
    for name, (text, names) in HUB_SCHEMA.items():
        task = GLUE_TASKS[name]
        assert task.name == name
        assert list(task.text_columns) == text
        assert task.is_regression == (names is None)
        assert list(task.label_names) == (names or [])
        assert task.num_labels == (1 if names is None else len(names))
        assert task.features == hub_features(name)


def test_table_folders_splits_and_metrics():
    folders = {t.name: t.folder for t in GLUE_TASKS.values()}
    assert folders == {
        "cola": "CoLA", "sst2": "SST-2", "mrpc": "MRPC", "stsb": "STS-B", "qqp": "QQP",
        "mnli": "MNLI", "qnli": "QNLI", "rte": "RTE", "wnli": "WNLI",
    }  # fmt: skip
    mnli = GLUE_TASKS["mnli"]
    assert mnli.validation_splits == ("validation_matched", "validation_mismatched")
    assert mnli.split_files == {
        "train": "train.tsv",
        "validation_matched": "dev_matched.tsv",
        "validation_mismatched": "dev_mismatched.tsv",
    }
    assert mnli.eval_split == "validation_matched"
    assert GLUE_TASKS["rte"].split_files == {"train": "train.tsv", "validation": "dev.tsv"}

    expected_metrics = {"cola": ("matthews_correlation",), "mrpc": ("accuracy", "f1"), "qqp": ("accuracy", "f1"),
                        "stsb": ("pearson", "spearmanr")}  # fmt: skip
    best = {"cola": "matthews_correlation", "mrpc": "f1", "qqp": "f1", "stsb": "pearson"}
    for task in GLUE_TASKS.values():
        assert task.metric_names == expected_metrics.get(task.name, ("accuracy",))
        assert task.metric_for_best_model == best.get(task.name, "accuracy")
        assert task.metric_for_best_model in task.metric_names


def test_task_is_frozen():
    with pytest.raises(AttributeError):
        GLUE_TASKS["rte"].folder = "X"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("spelling", "name"),
    [("rte", "rte"), ("RTE", "rte"), ("SST-2", "sst2"), ("sst-2", "sst2"), ("STS-B", "stsb"), ("sts-b", "stsb"),
     ("MNLI", "mnli"), (" CoLA ", "cola")],
)  # fmt: skip
def test_get_task_spellings(spelling, name):
    assert get_task(spelling) is GLUE_TASKS[name]
    assert get_task(GLUE_TASKS[name]) is GLUE_TASKS[name]


def test_get_task_unknown_lists_valid_tasks_sorted():
    with pytest.raises(ValueError, match="bogus") as info:
        get_task("bogus")
    assert isinstance(info.value, GlueDataError)
    assert "cola, mnli, mrpc, qnli, qqp, rte, sst2, stsb, wnli" in str(info.value)


# ------------------------------------------------------------------------------------- the real GLUE files


def real_glue(task: str, request) -> Path:
    """The embedded copy for RTE and MRPC (on every clone); ../shared/glue or $GLUE_DIR for the rest (or skip)."""
    return request.getfixturevalue("embedded_glue" if task in ("rte", "mrpc") else "glue_root")


# Row counts and label counts per split, by Hub label id, from /work/shared/glue/README.md.
README_COUNTS = {
    "rte": {"train": {0: 1249, 1: 1241}, "validation": {0: 146, 1: 131}},
    "mrpc": {"train": {1: 2474, 0: 1194}, "validation": {1: 279, 0: 129}},
    "cola": {"train": {1: 6023, 0: 2528}, "validation": {1: 721, 0: 322}},
    "sst2": {"train": {1: 37569, 0: 29780}, "validation": {1: 444, 0: 428}},
    "wnli": {"train": {0: 323, 1: 312}, "validation": {0: 40, 1: 31}},
}


@pytest.mark.parametrize("task", sorted(README_COUNTS))
def test_real_classification_counts_and_schema(request, task):
    dsd = read_glue_tsv(real_glue(task, request), task)
    assert sorted(dsd) == ["train", "validation"]
    for split, counts in README_COUNTS[task].items():
        ds = dsd[split]
        assert ds.num_rows == sum(counts.values())
        assert dict(Counter(ds["label"])) == counts
        assert ds.features == hub_features(task)
        assert ds.column_names == [*HUB_SCHEMA[task][0], "label", "idx"]
        assert ds["idx"] == list(range(ds.num_rows))
        for col in HUB_SCHEMA[task][0]:
            assert all(isinstance(s, str) and s for s in ds[col][:50])


def test_real_text_is_not_mangled_by_quotes(embedded_glue):
    # MRPC's text has unbalanced `"`; default csv quoting would merge rows. First train row per the README.
    row = read_glue_tsv(embedded_glue, "mrpc")["train"][0]
    assert row["sentence1"].startswith('Amrozi accused his brother , whom he called " the witness "')
    assert row["label"] == 1


def test_real_stsb_scores(glue_root):
    dsd = read_glue_tsv(glue_root, "STS-B")
    assert dsd["train"].num_rows == 5749 and dsd["validation"].num_rows == 1500
    assert dsd["train"].features == hub_features("stsb")
    for split, mean in [("train", 2.701), ("validation", 2.364)]:
        scores = dsd[split]["label"]
        assert round(sum(scores) / len(scores), 3) == mean
        assert min(scores) >= 0.0 and max(scores) <= 5.0


def test_real_qnli_missing_train_is_clear(glue_root):
    with pytest.raises(FileNotFoundError) as info:
        read_glue_tsv(glue_root, "qnli")
    msg = str(info.value)
    assert str(glue_root / "QNLI" / "train.tsv") in msg and "\n" not in msg


def test_real_qnli_dev_parses(glue_root, tmp_path):
    # Only dev.tsv exists locally; link it in as both splits to check the QNLI layout without copying data.
    (tmp_path / "QNLI").mkdir()
    for name in ("train.tsv", "dev.tsv"):
        (tmp_path / "QNLI" / name).symlink_to(glue_root / "QNLI" / "dev.tsv")
    ds = read_glue_tsv(tmp_path, "qnli")["validation"]
    assert ds.num_rows == 5463
    assert dict(Counter(ds["label"])) == {0: 2702, 1: 2761}
    assert ds.features == hub_features("qnli")


# ------------------------------------------------------------------------------------- synthetic layouts


def test_cola_headerless_and_test_split(tmp_path):
    rows = ["gj04\t1\t\tThe sailors rode the breeze.", "gj04\t0\t*\tThe more I read, I understand."]
    write_tsv(tmp_path / "CoLA" / "train.tsv", rows)
    write_tsv(tmp_path / "CoLA" / "dev.tsv", rows[:1])
    write_tsv(tmp_path / "CoLA" / "test.tsv", ["index\tsentence", "0\tBill left.", "1\tLeft Bill."])
    dsd = read_glue_tsv(tmp_path, "cola")
    assert dsd["train"]["label"] == [1, 0]
    assert dsd["train"]["sentence"][1] == "The more I read, I understand."
    assert dsd["test"]["sentence"] == ["Bill left.", "Left Bill."]
    assert dsd["test"]["label"] == [-1, -1] and dsd["test"]["idx"] == [0, 1]
    assert dsd["test"].features == hub_features("cola")


def test_mrpc_bom_header(tmp_path):
    header = "\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String"
    for name in ("train.tsv", "dev.tsv"):
        write_tsv(tmp_path / "MRPC" / name, [header, '0\t1\t2\tHe said " so .\tShe said .'])
    ds = read_glue_tsv(tmp_path, "mrpc")["train"]
    assert ds[0] == {"sentence1": 'He said " so .', "sentence2": "She said .", "label": 0, "idx": 0}


def test_mnli_layout_and_splits(tmp_path):
    parse = "\t".join(["( a )"] * 4)
    train_header = "index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\t" \
                   "sentence1_parse\tsentence2_parse\tsentence1\tsentence2\tlabel1\tgold_label"  # fmt: skip
    dev_header = train_header.replace("label1\tgold_label", "label1\tlabel2\tlabel3\tlabel4\tlabel5\tgold_label")
    write_tsv(tmp_path / "MNLI" / "train.tsv",
              [train_header, f"0\t1\t1e\tfiction\t{parse}\tP one.\tH one.\tneutral\tneutral"])  # fmt: skip
    votes = "contradiction\t" * 5
    for name in ("dev_matched.tsv", "dev_mismatched.tsv"):
        write_tsv(tmp_path / "MNLI" / name,
                  [dev_header, f"0\t1\t1c\tslate\t{parse}\tP {name}.\tH two.\t{votes}contradiction"])  # fmt: skip
    dsd = read_glue_tsv(tmp_path, "MNLI")
    assert sorted(dsd) == ["train", "validation_matched", "validation_mismatched"]
    assert dsd["train"][0] == {"premise": "P one.", "hypothesis": "H one.", "label": 1, "idx": 0}
    assert dsd["validation_mismatched"][0]["premise"] == "P dev_mismatched.tsv."
    assert dsd["validation_matched"]["label"] == [2]
    assert dsd["train"].features == hub_features("mnli")


def test_qqp_and_stsb_layouts(tmp_path):
    qqp = ["id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate", "7\t1\t2\tWhy?\tHow come?\t1"]
    for name in ("train.tsv", "dev.tsv"):
        write_tsv(tmp_path / "QQP" / name, qqp)
    assert read_glue_tsv(tmp_path, "qqp")["train"][0] == {
        "question1": "Why?", "question2": "How come?", "label": 1, "idx": 0}  # fmt: skip

    header = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore"
    row = "0\tmain-news\tx\t2012\t0001\tnone\tnone\tA plane.\tAn air plane.\t3.800"
    for name in ("train.tsv", "dev.tsv"):
        write_tsv(tmp_path / "STS-B" / name, [header, row])
    write_tsv(tmp_path / "STS-B" / "test.tsv", [header.removesuffix("\tscore"), row.removesuffix("\t3.800")])
    dsd = read_glue_tsv(tmp_path, "stsb")
    assert dsd["train"]["label"] == [pytest.approx(3.8)]
    assert dsd["test"]["label"] == [-1.0] and dsd["test"]["sentence2"] == ["An air plane."]


# ------------------------------------------------------------------------------------------- bad input


def test_missing_folder(tmp_path):
    with pytest.raises(GlueFileNotFoundError) as info:
        read_glue_tsv(tmp_path, "rte")
    assert isinstance(info.value, FileNotFoundError)
    assert str(tmp_path / "RTE") in str(info.value) and "train.tsv" in str(info.value)


def test_missing_dev_file(tmp_path):
    write_tsv(tmp_path / "RTE" / "train.tsv", ["index\tsentence1\tsentence2\tlabel"])
    with pytest.raises(GlueFileNotFoundError, match="dev.tsv"):
        read_glue_tsv(tmp_path, "rte")


def test_header_missing_column(tmp_path):
    write_tsv(tmp_path / "RTE" / "train.tsv", ["index\tsentence1\tsentence_2\tlabel", "0\ta\tb\tentailment"])
    write_tsv(tmp_path / "RTE" / "dev.tsv", ["index\tsentence1\tsentence2\tlabel"])
    with pytest.raises(GlueFormatError) as info:
        read_glue_tsv(tmp_path, "rte")
    msg = str(info.value)
    assert isinstance(info.value, ValueError)
    assert "train.tsv" in msg and "'sentence2'" in msg and "sentence_2" in msg


@pytest.mark.parametrize(
    ("task", "folder", "header", "bad_row", "valid"),
    [
        ("rte", "RTE", "index\tsentence1\tsentence2\tlabel", "1\ta\tb\tmaybe", "not_entailment"),
        ("wnli", "WNLI", "index\tsentence1\tsentence2\tlabel", "1\ta\tb\t2", "'1'"),
        ("sst2", "SST-2", "sentence\tlabel", "good\tpositive", "'0'"),
        ("stsb", "STS-B", "index\tg\tf\ty\to\ts1\ts2\tsentence1\tsentence2\tscore", "0\tg\tf\ty\to\ts\ts\ta\tb\tn/a",
         "number"),
    ],
)  # fmt: skip
def test_label_outside_label_set(tmp_path, task, folder, header, bad_row, valid):
    good = {"rte": "0\ta\tb\tentailment", "wnli": "0\ta\tb\t0", "sst2": "fine\t1",
            "stsb": "0\tg\tf\ty\to\ts\ts\ta\tb\t1.0"}[task]  # fmt: skip
    write_tsv(tmp_path / folder / "train.tsv", [header, good, bad_row])
    write_tsv(tmp_path / folder / "dev.tsv", [header, good])
    with pytest.raises(GlueFormatError) as info:
        read_glue_tsv(tmp_path, task)
    msg = str(info.value)
    bad_label = bad_row.rsplit("\t", 1)[1]
    assert f"{tmp_path / folder / 'train.tsv'}:3" in msg  # file and line number
    assert repr(bad_label) in msg and valid in msg


def test_wrong_field_count(tmp_path):
    rte_dir(tmp_path, dev_rows=["0\tonly two\tentailment"])
    with pytest.raises(GlueFormatError) as info:
        read_glue_tsv(tmp_path, "rte")
    assert f"{tmp_path / 'RTE' / 'dev.tsv'}:2" in str(info.value)
    assert "found 3" in str(info.value)


def test_cola_wrong_field_count(tmp_path):
    write_tsv(tmp_path / "CoLA" / "train.tsv", ["gj04\t1\t\tFine.", "gj04\t1\tNo mark column."])
    write_tsv(tmp_path / "CoLA" / "dev.tsv", ["gj04\t1\t\tFine."])
    with pytest.raises(GlueFormatError, match=r"train\.tsv:2"):
        read_glue_tsv(tmp_path, "cola")


def test_non_utf8_file(tmp_path):
    rte_dir(tmp_path)
    (tmp_path / "RTE" / "dev.tsv").write_bytes(b"index\tsentence1\tsentence2\tlabel\n0\tcaf\xe9\tb\tentailment\n")
    with pytest.raises(GlueFormatError, match=r"dev\.tsv: not UTF-8"):
        read_glue_tsv(tmp_path, "rte")


# ------------------------------------------------------------------------------------------- load_glue


def _hub_fails(exc: Exception):
    def fake_load_dataset(*args, **kwargs):
        raise exc

    return fake_load_dataset


@pytest.mark.parametrize(
    "exc",
    [ConnectionError("Couldn't reach 'nyu-mll/glue' on the Hub"), OfflineModeIsEnabled("offline"),
     LocalEntryNotFoundError("not cached"), TimeoutError("timed out")],
)  # fmt: skip
def test_load_glue_hub_unreachable(monkeypatch, exc):
    monkeypatch.delenv("GLUE_DIR", raising=False)
    monkeypatch.setattr(datasets, "load_dataset", _hub_fails(exc))
    with pytest.raises(GlueDataError) as info:
        load_glue("cola")
    msg = str(info.value)
    assert "--data_dir" in msg and "GLUE_DIR" in msg and "unreachable" in msg and "\n" not in msg
    assert info.value.__cause__ is exc


def test_load_glue_other_hub_errors_propagate(monkeypatch):
    monkeypatch.delenv("GLUE_DIR", raising=False)
    monkeypatch.setattr(datasets, "load_dataset", _hub_fails(KeyError("bug")))
    with pytest.raises(KeyError):
        load_glue("rte", from_hub=True)


def test_load_glue_calls_hub_with_config_name(monkeypatch):
    monkeypatch.delenv("GLUE_DIR", raising=False)
    calls = []
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: calls.append(a) or "hub")
    assert load_glue("SST-2") == "hub"
    assert calls == [("nyu-mll/glue", "sst2")]


def test_load_glue_uses_env_then_argument(monkeypatch, tmp_path):
    monkeypatch.setattr(datasets, "load_dataset", _hub_fails(AssertionError("must not touch the Hub")))
    env_root = rte_dir(tmp_path / "env")
    arg_root = rte_dir(tmp_path / "arg", dev_rows=["0\tx\ty\tentailment", "1\tx\ty\tnot_entailment"])
    monkeypatch.setenv("GLUE_DIR", str(env_root))
    assert load_glue("rte")["validation"].num_rows == 1
    assert load_glue("rte", data_dir=arg_root)["validation"].num_rows == 2


def test_load_glue_env_missing_files_is_glue_error(monkeypatch, tmp_path):
    monkeypatch.setenv("GLUE_DIR", str(tmp_path))
    with pytest.raises(GlueDataError, match="RTE"):
        load_glue("rte")


# ---------------------------------------------------------------------------------------- tokenize_glue


@pytest.fixture
def tiny_tokenizer(tmp_path):
    from transformers import BertTokenizerFast

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "the", "man", "cat", "sat", "sleeps", "is", "."]
    (tmp_path / "tok").mkdir()
    (tmp_path / "tok" / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    tokenizer = BertTokenizerFast.from_pretrained(tmp_path / "tok")
    assert tokenizer.tokenize("The cat sat.") == ["the", "cat", "sat", "."]  # the vocab really loaded
    return tokenizer


def test_tokenize_pairs(tmp_path, tiny_tokenizer):
    long = " ".join(["the man sat ."] * 20)
    rows = [f"0\t{long}\t{long}\tnot_entailment", "1\ta cat\ta man\tentailment"]
    dsd = read_glue_tsv(rte_dir(tmp_path, train_rows=rows), "rte")
    out = tokenize_glue(dsd, tiny_tokenizer, "rte", max_seq_length=16)
    assert sorted(out) == ["train", "validation"]
    for ds in out.values():
        assert set(ds.column_names) == {"input_ids", "token_type_ids", "attention_mask", "labels"}
        assert all(len(ids) <= 16 for ids in ds["input_ids"])
    train = out["train"]
    assert len(train[0]["input_ids"]) == 16  # truncated
    assert len(train[1]["input_ids"]) == 7  # not padded: [CLS] a cat [SEP] a man [SEP]
    assert set(train[1]["token_type_ids"]) == {0, 1}  # both sentences were encoded as a pair
    assert train["labels"] == [1, 0]
    assert train.features["labels"] == datasets.ClassLabel(names=["entailment", "not_entailment"])


def test_tokenize_stsb_keeps_float_labels(tmp_path, tiny_tokenizer):
    header = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore"
    for name in ("train.tsv", "dev.tsv"):
        write_tsv(tmp_path / "STS-B" / name, [header, "0\tg\tf\ty\to\ts\ts\tA cat sat.\tThe cat sat.\t4.250"])
    out = tokenize_glue(read_glue_tsv(tmp_path, "stsb"), tiny_tokenizer, "stsb", max_seq_length=32)
    assert out["train"].features["labels"] == datasets.Value("float32")
    assert out["train"]["labels"] == [pytest.approx(4.25)]


@pytest.mark.parametrize("bad", [0, -3, 1.5, True])
def test_tokenize_rejects_bad_length(tmp_path, tiny_tokenizer, bad):
    with pytest.raises(ValueError, match="max_seq_length"):
        tokenize_glue(read_glue_tsv(rte_dir(tmp_path), "rte"), tiny_tokenizer, "rte", max_seq_length=bad)


def test_data_module_exports():
    public = {"GLUE_TASKS", "GlueDataError", "get_task", "load_glue", "read_glue_tsv", "tokenize_glue"}
    assert public <= set(data.__all__) | set(tasks.__all__)
