"""The shipped task CSVs: exactly what python/make_dataset.py generates, and well formed."""
import csv
import importlib.util
import os

import pytest

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
