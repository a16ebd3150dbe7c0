"""Classification data for the training job: the CSV, what each task says, and token tensors.

A task is a CSV with columns ``text,label,split`` (splits ``train`` and ``validation``, no
other; at least 2 labels in ``train``, and every ``validation`` label among them). How a
model sees it comes from a :class:`TaskSpec`: the shipped files get theirs from :data:`SPECS`
(by file name and label set), any other CSV a generic one built from its label names. Labels
are read without surrounding whitespace.

* causal LMs read ``"<text><cue>"`` and predict the label word as the next token (the
  verbalizer maps each label to one token id);
* encoders compare the prompted sentence embedding with embeddings of label descriptions.
"""
from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from ._cli import CLIError, first_line

DATA_CSV = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "reviews.csv")
#: The values of a CSV's split column.
SPLITS = ("train", "validation")
#: Per-example tensors of an encoded split; everything else in it describes the labels (and the
#: causal cue).
EXAMPLE_KEYS = ("ids", "mask", "y")


@dataclass(frozen=True)
class TaskSpec:
    """How a CSV's examples and labels are put to a model.

    instruction: what the task asks (the default text of ``--init text``).
    cue: appended to each text for causal LMs; the label word is the next token after it.
    describe: format of a label's description for the encoder, ``{label}`` is the label name.
    labels: the sorted label names it is written for (a known file's; empty for a generic spec).
    """
    instruction: str
    cue: str
    describe: str
    labels: Tuple[str, ...] = ()


SPECS: Dict[str, TaskSpec] = {
    "reviews.csv": TaskSpec(
        instruction="Is the sentiment of this review negative, neutral or positive?",
        cue=" Sentiment:", describe="This review is {label}.",
        labels=("negative", "neutral", "positive")),
    "topics.csv": TaskSpec(
        instruction="Is this text about food, science, sports or travel?",
        cue=" Topic:", describe="This text is about {label}.",
        labels=("food", "science", "sports", "travel")),
}


def task_spec(path: str, names: Sequence[str]) -> TaskSpec:
    """The spec of the CSV at ``path``: a known one where its name and labels are a shipped
    file's (a user's own ``reviews.csv`` of other labels is not asked about sentiment), else
    generic from the label names."""
    known = SPECS.get(os.path.basename(path))
    if known is not None and tuple(names) == known.labels:
        return known
    return TaskSpec(instruction=f"Is this {', '.join(names[:-1])} or {names[-1]}?"
                    if len(names) > 1 else f"Is this {names[0]}?",
                    cue=" Answer:", describe="{label}")


def load_data(path: str) -> Tuple[Dict[str, Tuple[List[str], List[int]]], List[str]]:
    """split -> (texts, label indices), and the sorted label names."""
    try:
        # utf-8-sig: spreadsheet programs' "CSV UTF-8" starts with a byte-order mark, which
        # would otherwise become part of the first column's name.
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            rows, lines = [], []
            for row in reader:
                rows.append(row)
                lines.append(reader.line_num)
            columns = set(reader.fieldnames or ())
    except OSError as exc:
        raise CLIError(f"--data: cannot read {path}: {exc.strerror or exc}") from None
    except (UnicodeDecodeError, csv.Error) as exc:
        raise CLIError(f"--data: {path} is not a CSV text file: {first_line(exc)}") from None
    if not {"text", "label", "split"} <= columns:
        raise CLIError(f"--data: {path} needs columns text,label,split")
    for name in ("text", "label", "split"):  # DictReader would keep the last one, unsaid
        if (reader.fieldnames or []).count(name) > 1:
            raise CLIError(f"--data: {path} has more than one column named {name!r}")
    if not rows:
        raise CLIError(f"--data: {path} has no rows after its header")
    width = len(reader.fieldnames or ())  # not None: it named the columns above
    for row, line in zip(rows, lines):
        # DictReader fills a short row's missing fields with None and keeps a long row's extra
        # ones under the key None. Other columns may be left empty; these three may not.
        short = any(row[k] is None for k in ("text", "label", "split"))
        if short or None in row:
            given = width - list(row.values()).count(None) + len(row.get(None) or ())
            hint = "" if short else "; quote texts that contain commas"
            raise CLIError(f"--data: {path} line {line} has {given} field"
                           f"{'s' if given != 1 else ''}, the header has {width}{hint}")
    for row, line in zip(rows, lines):
        # A blank label would become a class of its own, a blank text an input of no tokens.
        for key in ("text", "label"):
            if not row[key].strip():
                raise CLIError(f"--data: {path} line {line} has an empty {key}")
        # "positive " from a spreadsheet cell is "positive", not a class of its own.
        row["label"] = row["label"].strip()
        # Any other value ("Train", "valid") would drop its rows from both splits unseen.
        if row["split"] not in SPLITS:
            raise CLIError(f"--data: {path} line {line} has split {row['split']!r}; the "
                           f"splits are {' and '.join(SPLITS)}")
    for split in SPLITS:
        if not any(r["split"] == split for r in rows):
            raise CLIError(f"--data: {path} has no {split!r} rows")
    # The classes are the training labels: with one, the task loss is 0 and every prediction
    # right; a label only in validation would be a class the model is never trained on.
    names = sorted({r["label"] for r in rows if r["split"] == "train"})
    if len(names) < 2:
        raise CLIError(f"--data: {path} has one label in its 'train' rows ({names[0]!r}); "
                       "a classifier needs at least 2")
    for row, line in zip(rows, lines):
        if row["label"] not in names:
            raise CLIError(f"--data: {path} line {line} has validation label "
                           f"{row['label']!r}, which no 'train' row has")
    out: Dict[str, Tuple[List[str], List[int]]] = {}
    for split in SPLITS:
        sel = [r for r in rows if r["split"] == split]
        out[split] = ([r["text"] for r in sel], [names.index(r["label"]) for r in sel])
    return out, names


def check_descriptions(names: Sequence[str], ids: torch.Tensor, mask: torch.Tensor,
                       positions: Optional[int]) -> None:
    """The similarity head's label descriptions (``ids``/``mask`` ``(C, Lc)``, run through the
    model without the prompt) must differ as tokens (an uncased tokenizer reads ``Positive``
    and ``positive`` alike: one of the two could never be predicted) and fit the model's
    ``positions`` (its own error names neither the flag nor the label)."""
    seen: Dict[Tuple[int, ...], str] = {}
    for name, row, keep in zip(names, ids.tolist(), mask.tolist()):
        tokens = tuple(t for t, k in zip(row, keep) if k)
        if tokens in seen:
            raise CLIError(f"--data: labels {seen[tokens]!r} and {name!r} have the same "
                           "description for this tokenizer, so the similarity head cannot "
                           "tell them apart: spell them alike, rename one, or use --head linear")
        seen[tokens] = name
        if positions is not None and len(tokens) > positions:
            raise CLIError(f"--data: label {name[:40]!r}{'...' if len(name) > 40 else ''} is "
                           f"{len(tokens)} tokens described, more than the model's {positions} "
                           "positions")


def verbalizer(tok, names: Sequence[str], cue: str) -> torch.Tensor:
    """``(C,)`` token ids: label ``c`` is answered by the single token ``ids[c]``.

    The token is the one the model must predict: the label word as it follows the cue,
    ``encode(cue + " " + name)`` past ``encode(cue)`` (for SentencePiece vocabularies such as
    Gemma's, ``▁word``, not the bare ``word``). A label that is not exactly one token there is an
    error naming it.
    """
    head = tok.encode(cue, add_special_tokens=False)
    ids = []
    for name in names:
        full = tok.encode(cue + " " + name, add_special_tokens=False)
        merged = full[:len(head)] != head  # the label changes how the cue itself splits
        pieces = full if merged else full[len(head):]
        if merged or len(pieces) != 1:
            what = "merges with the cue" if merged else f"is {len(pieces)} tokens"
            raise CLIError(f"--data: label {name!r} {what} for this tokenizer after the cue "
                           f"{cue!r} ({tok.convert_ids_to_tokens(pieces)}); the causal task "
                           "needs one token per label word")
        ids.append(pieces[0])
    if len(set(ids)) != len(ids):
        raise CLIError("--data: two label words map to the same token for this tokenizer")
    return torch.tensor(ids)


def _pad_right(rows: List[List[int]], pad: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Right padding: every row's tokens sit in columns 0.. as when it runs alone, so position
    ids, sliding-window attention (Gemma's window counts columns, pads included) and PEFT's own
    forward (plain ``arange`` positions) all see it as they would unpadded; the answer position
    is each row's last real token (:func:`~tsloss_cuda.prompt_tuning.last_real_index`)."""
    length = max(len(r) for r in rows)
    ids = torch.full((len(rows), length), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), length), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = torch.tensor(r)
        mask[i, :len(r)] = 1
    return ids, mask


def _leading_specials(tok, probe: str) -> List[int]:
    """The special tokens the tokenizer puts before a text (Gemma's BOS, BERT's [CLS]); not
    those after it ([SEP], an EOS), which would sit between the text and the cue. Found around
    ``probe``'s own tokens (a probe of unknown words would give [UNK], itself special)."""
    full, bare = tok.encode(probe), tok.encode(probe, add_special_tokens=False)
    for i in range(len(full) - len(bare) + 1):
        if bare and full[i:i + len(bare)] == bare:
            return full[:i]
    special, k = set(tok.all_special_ids), 0
    while k < len(full) and full[k] in special:
        k += 1
    return full[:k]


def encode(tok, texts: List[str], labels: List[int], task: str, names: List[str],
           max_length: int, spec: TaskSpec) -> Dict[str, torch.Tensor]:
    """Token tensors of one split: ``ids``/``mask`` ``(M, L)`` and ``y`` ``(M,)``, plus the
    label tensors.

    encoder: right-padded texts; ``label_ids``/``label_mask`` ``(C, Lc)`` the label
    descriptions. causal: right-padded ``"<text><cue>"`` after the tokenizer's leading special
    tokens (truncated to ``max_length`` tokens, the cue kept), the answer position each row's
    last real token; ``label_ids`` ``(C,)`` the verbalizer's tokens, ``cue_ids`` the cue's,
    which end every row.
    """
    y = torch.tensor(labels)
    if task == "encoder":
        least = tok.num_special_tokens_to_add() + 1
        if max_length < least:  # the tokenizer's own error names neither flag nor cause
            raise CLIError(f"--max-length {max_length}: this tokenizer needs at least {least} "
                           f"tokens per sentence (its {least - 1} special tokens and one word)")
        enc = tok(texts, padding="max_length", truncation=True, max_length=max_length,
                  return_tensors="pt")
        desc = tok([spec.describe.format(label=n) for n in names], padding=True,
                   return_tensors="pt")
        return {"ids": enc["input_ids"], "mask": enc["attention_mask"], "y": y,
                "label_ids": desc["input_ids"], "label_mask": desc["attention_mask"]}
    label_ids = verbalizer(tok, names, spec.cue)
    pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
    cue = tok.encode(spec.cue, add_special_tokens=False)
    lead = _leading_specials(tok, spec.cue)
    least = len(lead) + len(cue) + 1
    if max_length < least:  # shorter, every row was the cue alone: the same input for all
        raise CLIError(f"--max-length {max_length}: this tokenizer and cue need at least {least} "
                       f"tokens per text ({len(lead)} leading special, the cue's {len(cue)} and "
                       "one word)")
    rows = []
    for t in texts:
        body = lead + tok.encode(t, add_special_tokens=False)
        rows.append(body[: max_length - len(cue)] + cue)
    ids, mask = _pad_right(rows, pad)
    return {"ids": ids, "mask": mask, "y": y, "label_ids": label_ids,
            "cue_ids": torch.tensor(cue, dtype=torch.long)}


def _text_mask(data: Dict[str, torch.Tensor]) -> torch.Tensor:
    """``(M, L)`` bool: the tokens of the texts, a causal row's cue (its last real tokens, the
    same in every row) left out; an encoder's rows have no cue."""
    mask = data["mask"].bool()
    cue = data.get("cue_ids")
    if cue is None or cue.numel() == 0:
        return mask
    ends = mask.sum(1, keepdim=True) - cue.numel()  # (M, 1): where each row's cue begins
    return mask & (torch.arange(mask.shape[1]) < ends)


def frequent_tokens(data: Dict[str, torch.Tensor], exclude: List[int],
                    k: int = 5000) -> List[int]:
    """The ``k`` most frequent token ids of a split's texts, ``exclude`` (the special tokens)
    and a causal row's cue left out (it ends every row: its tokens ranked first, though no
    text holds them); ties go to the smaller id. Lester et al. (2021) initialise a prompt
    from the 5,000 most common tokens of the vocabulary; offline, the task's own texts stand
    in for the pretraining corpus' counts."""
    counts = torch.bincount(data["ids"][_text_mask(data)])
    if exclude:
        drop = torch.tensor(sorted(set(exclude)))
        counts[drop[drop < counts.numel()]] = 0
    order = torch.argsort(-counts, stable=True)  # stable: ties keep the smaller id first
    ranked: List[int] = order[counts[order] > 0].tolist()
    if not ranked:
        raise CLIError("--init frequent: the training texts have no tokens but special ones")
    return ranked[:k]


def take(data: Dict[str, torch.Tensor], n: int) -> Dict[str, torch.Tensor]:
    """The first ``n`` examples of an encoded split (label tensors unchanged)."""
    return {k: (v[:n] if k in EXAMPLE_KEYS else v) for k, v in data.items()}


def classes_left_out(data: Dict[str, torch.Tensor], n: int, names: Sequence[str]) -> List[str]:
    """The classes of an encoded split that its first ``n`` examples (:func:`take`) do not
    hold: a file sorted by label would be validated on its first classes alone."""
    seen = set(data["y"][:n].tolist())
    return [names[c] for c in sorted(set(data["y"].tolist()) - seen)]


def batch(data: Dict[str, torch.Tensor], idx: torch.Tensor,
          device: torch.device) -> Dict[str, torch.Tensor]:
    """Rows ``idx`` as model inputs, trimmed to the longest text in them (most of the compute
    saved; both tasks pad on the right): ``input_ids``/``attention_mask`` ``(B, L')`` and
    ``labels`` ``(B,)``."""
    ids, mask = data["ids"][idx], data["mask"][idx]
    hi = int(mask.any(0).nonzero().max()) + 1
    return {"input_ids": ids[:, :hi].to(device), "attention_mask": mask[:, :hi].to(device),
            "labels": data["y"][idx].to(device)}
