"""The shipped task CSVs: exactly what python/make_dataset.py generates, well formed, and
what `--data` accepts (tsloss_cuda.tasks.load_data)."""
import csv
import importlib.util
import os

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(ROOT, "tsloss_cuda", "data")
TASKS = ["reviews", "topics"]


def _generator():
    spec = importlib.util.spec_from_file_location(
        "make_dataset", os.path.join(ROOT, "python", "make_dataset.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("task", TASKS)
def test_csv_is_what_the_generator_writes(task, tmp_path):
    out = tmp_path / f"{task}.csv"
    _generator().main(["--task", task, "--out", str(out)])
    with open(os.path.join(DATA, f"{task}.csv"), "rb") as f:
        shipped = f.read()
    assert out.read_bytes() == shipped, (
        f"tsloss_cuda/data/{task}.csv differs from `python python/make_dataset.py --task {task}`")


def test_default_task_is_reviews(tmp_path, monkeypatch):
    gen = _generator()
    written = []
    monkeypatch.setattr(gen, "write", lambda task, path: written.append((task, path)) or 0)
    gen.main([])
    assert written == [("reviews", os.path.join(gen.DATA_DIR, "reviews.csv"))]


@pytest.mark.parametrize("task", TASKS)
def test_csv_shape(task):
    path = os.path.join(DATA, f"{task}.csv")
    with open(path, newline="") as f:
        assert next(csv.reader(f)) == ["text", "label", "split"]
    rows = _rows(path)
    assert {r["split"] for r in rows} == {"train", "validation"}
    by_split = {s: [r for r in rows if r["split"] == s] for s in ("train", "validation")}
    labels = {r["label"] for r in rows}
    assert len(labels) >= 2
    for split, sel in by_split.items():
        assert {r["label"] for r in sel} == labels, f"{task}: a label is missing from {split}"
    assert len(by_split["validation"]) >= 150
    train = {r["text"] for r in by_split["train"]}
    val = {r["text"] for r in by_split["validation"]}
    assert not train & val, f"{task}: texts shared by train and validation"
    assert len(train) == len(by_split["train"]) and len(val) == len(by_split["validation"])
    assert all(r["text"].strip() for r in rows)


def test_topics_design():
    rows = _rows(os.path.join(DATA, "topics.csv"))
    assert {r["label"] for r in rows} == {"food", "science", "sports", "travel"}
    val = [r for r in rows if r["split"] == "validation"]
    # Stratified: equal validation rows per class, at least 40 each.
    counts = {lab: sum(r["label"] == lab for r in val) for lab in ("food", "science", "sports",
                                                                   "travel")}
    assert len(set(counts.values())) == 1 and min(counts.values()) >= 40, counts


@pytest.mark.parametrize("where", ["missing", "folder"])
def test_out_that_cannot_be_a_file_is_one_line(where, tmp_path):
    """--out in a folder that does not exist, or naming a folder: a traceback
    (FileNotFoundError, IsADirectoryError) before; now one line naming --out, nothing written."""
    out = tmp_path / "nodir" / "x.csv" if where == "missing" else tmp_path
    with pytest.raises(SystemExit, match=r"^make_dataset: --out .*(folder not found|is a folder)"):
        _generator().main(["--out", str(out)])
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("out", ["", "  "])
def test_an_empty_out_is_refused_not_the_default(out, monkeypatch, tmp_path):
    """--out '' fell back to the package's own CSV and overwrote it."""
    gen = _generator()
    monkeypatch.setattr(gen, "write", lambda *a: pytest.fail("wrote a file"))
    with pytest.raises(SystemExit, match=r"^make_dataset: --out is empty"):
        gen.main(["--out", out])


def test_a_crash_mid_write_leaves_the_file_whole(tmp_path, monkeypatch):
    """Without --out the shipped CSV is rewritten: it was truncated first, so a crash while
    writing left it cut short. Now the new file is written beside it and moved over it."""
    gen = _generator()
    target = tmp_path / "reviews.csv"
    target.write_text("text,label,split\nold,pos,train\n")

    def rows():
        yield ("new", "pos", "train")
        raise KeyboardInterrupt

    monkeypatch.setitem(gen.TASKS, "reviews", rows)
    with pytest.raises(KeyboardInterrupt):
        gen.write("reviews", str(target))
    assert target.read_text() == "text,label,split\nold,pos,train\n"
    assert os.listdir(tmp_path) == ["reviews.csv"]  # no temporary file left behind


@pytest.mark.parametrize("body,message", [
    # one label: task loss 0, val accuracy 1.000 after no training at all
    ("good,pos,train\nbad,pos,train\nfine,pos,validation\n",
     "has one label in its 'train' rows ('pos'); a classifier needs at least 2"),
    # a class only validation has, which no step trains
    ("good,pos,train\nbad,neg,train\nfine,other,validation\n",
     "line 4 has validation label 'other', which no 'train' row has"),
    # rows of other splits were dropped from both, unseen
    ("good,pos,Train\nbad,neg,train\nfine,pos,validation\n",
     "line 2 has split 'Train'; the splits are train and validation"),
    ("good,pos,train\nbad,neg,train\nfine,pos,validation\nok,neg,valid\n",
     "line 5 has split 'valid'; the splits are train and validation"),
])
def test_data_that_cannot_train_a_classifier_is_refused(tmp_path, body, message):
    from tsloss_cuda._cli import CLIError
    from tsloss_cuda.tasks import load_data
    path = tmp_path / "task.csv"
    path.write_text("text,label,split\n" + body)
    with pytest.raises(CLIError) as info:
        load_data(str(path))
    assert str(info.value) == f"--data: {path} {message}"


@pytest.mark.parametrize("task", TASKS)
def test_shipped_csv_loads(task):
    from tsloss_cuda.tasks import load_data
    data, names = load_data(os.path.join(DATA, f"{task}.csv"))
    assert len(names) >= 2 and set(data) == {"train", "validation"}


def test_a_generic_task_asks_which_of_its_labels(tmp_path):
    """A CSV without a known spec gets the question "Is this a, b or c?" (the default --init
    text), a cue " Answer:" and the bare label as its description."""
    from tsloss_cuda.tasks import SPECS, task_spec
    spec = task_spec(str(tmp_path / "mine.csv"), ["cats", "dogs", "fish"])
    assert spec.instruction == "Is this cats, dogs or fish?"
    assert spec.cue == " Answer:" and spec.describe.format(label="dogs") == "dogs"
    assert task_spec(str(tmp_path / "two.csv"), ["no", "yes"]).instruction == "Is this no or yes?"
    # A shipped file's spec goes with its name and its labels: a user's own reviews.csv of
    # other labels was asked about sentiment ("This review is spam.").
    assert task_spec("/any/where/reviews.csv", ["negative", "neutral", "positive"]) \
        is SPECS["reviews.csv"]
    assert task_spec("/any/where/topics.csv", ["food", "science", "sports", "travel"]) \
        is SPECS["topics.csv"]
    mine = task_spec("/any/where/reviews.csv", ["ham", "spam"])
    assert mine.instruction == "Is this ham or spam?" and mine.cue == " Answer:"


def test_labels_are_read_without_surrounding_spaces(tmp_path):
    """'positive ' from a spreadsheet cell was a class of its own beside 'positive', which an
    uncased encoder describes alike: it trained six classes of which three could never win."""
    from tsloss_cuda.tasks import load_data
    path = tmp_path / "task.csv"
    path.write_text("text,label,split\ngood,pos ,train\nbad,neg,train\nfine, pos,validation\n"
                    "ok,pos,train\n")
    data, names = load_data(str(path))
    assert names == ["neg", "pos"]
    assert data["train"][1] == [1, 0, 1] and data["validation"][1] == [1]


@pytest.mark.parametrize("header", ["text,label,split,text", "text,label,split,label",
                                    "split,text,label,split"])
def test_a_repeated_column_name_is_refused(tmp_path, header):
    """csv.DictReader keeps the last of two columns of one name: the job trained on the wrong
    texts, or blamed an empty label that the first column had."""
    from tsloss_cuda._cli import CLIError
    from tsloss_cuda.tasks import load_data
    path = tmp_path / "task.csv"
    path.write_text(header + "\n" + "a,pos,train,x\nb,neg,train,x\nc,pos,validation,x\n")
    name = next(n for n in ("text", "label", "split") if header.split(",").count(n) > 1)
    with pytest.raises(CLIError, match=f"more than one column named '{name}'"):
        load_data(str(path))


def test_labels_the_similarity_head_reads_alike_are_refused():
    """The similarity head compares the prompted text with each label's description: two
    labels that tokenize alike (case, for an uncased tokenizer) make one of them a class that
    never wins; a description past the model's positions failed inside the model (exit 1)."""
    from tsloss_cuda._cli import CLIError
    from tsloss_cuda.tasks import check_descriptions

    def uncased(texts):
        rows = [[hash(w) % 1000 for w in t.lower().split()] for t in texts]
        width = max(len(r) for r in rows)
        return (torch.tensor([r + [0] * (width - len(r)) for r in rows]),
                torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows]))

    check_descriptions(["neg", "pos"], *uncased(["neg", "pos"]), 4)
    with pytest.raises(CLIError, match="labels 'Pos' and 'pos' have the same description"):
        check_descriptions(["Pos", "neg", "pos"], *uncased(["Pos", "neg", "pos"]), 4)
    long = "a very long label of words"
    with pytest.raises(CLIError, match="is 6 tokens described, more than the model's 4 posit"):
        check_descriptions(["neg", long], *uncased(["neg", long]), 4)
    check_descriptions(["neg", long], *uncased(["neg", long]), None)  # no table: not checked
