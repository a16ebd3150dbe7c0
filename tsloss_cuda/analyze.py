"""Topology of saved soft prompts: ``python -m tsloss_cuda.analyze DIR``.

DIR holds ``.pt`` or ``.safetensors`` prompt checkpoints, each a ``(N, D)`` tensor or a dict
with one (``prompt``/``prompt_embeddings`` keys first, e.g. PEFT adapter state dicts), such as
the ``checkpoints/REG_seedS/step_000010.pt`` files of ``python -m tsloss_cuda.train``; or a
Hugging Face ``Trainer``'s output folder, whose ``checkpoint-STEP`` folders each hold a PEFT
prompt-tuning adapter (``adapter_model.safetensors`` or ``.bin``; a final adapter saved beside
them is not read).
When every file name holds a training step (``step_10``, ``step-000010``, ``step10``,
``checkpoint-10``), the checkpoints are
analysed in step order (two of one step are refused, naming them); otherwise (e.g.
``prompt_tsloss_seed0.pt`` .. ``seed2.pt``, different runs) in name order, numbered 0, 1, ...
in the ``step`` column, and without ``ts_stability``, which compares a prompt with its
predecessor in training. Writes ``topology_metrics.csv`` (the
columns of the training job's ``metrics.csv``: the same values for the same prompt),
``topology.png`` (metrics and TSLoss terms against the step) and ``diagrams.png`` (barcodes and
diagrams of the first, middle and last checkpoints) into ``DIR_analysis`` next to DIR unless
--output-dir is given. Offline; on the CPU unless ``--device cuda``.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import re
import sys
from typing import Dict, List, Optional, Tuple, Union

import torch

from ._cli import DEVICE_HELP, CLIError, Parser, check_device, check_writable, run_main
from ._ops import MAX_POINTS

PROG = "python -m tsloss_cuda.analyze"
PREFERRED_KEYS = ("prompt", "prompt_embeddings", "embedding.weight")


#: Checkpoint file types read directly in DIR.
EXTENSIONS = (".pt", ".safetensors")
#: A PEFT adapter's file in a Trainer's ``checkpoint-STEP`` folder, by preference.
ADAPTER_FILES = ("adapter_model.safetensors", "adapter_model.bin")


def checkpoint_step(name: str) -> Optional[int]:
    """The training step in a checkpoint's file name (``step_10``, ``step-000010``, ``step10``)
    or a Trainer's folder name (``checkpoint-10``), or None: another number in a name (a seed,
    a version) is no step."""
    m = re.search(r"(?:step[_-]?|checkpoint-)(\d+)", name)
    return int(m.group(1)) if m else None


def _prompt_entry(obj: dict, path: str) -> torch.Tensor:
    """The prompt in a dict checkpoint: a preferred key, else the one 2-D tensor whose key names a
    prompt, else the only 2-D tensor. Several candidates are refused by name: a model's
    state_dict holds 2-D weights (the vocabulary embedding first), none of them the prompt."""
    for k in PREFERRED_KEYS:
        if isinstance(obj.get(k), torch.Tensor):
            return obj[k]
    tensors = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor) and v.dim() == 2}
    named = [k for k in tensors if "prompt" in k.lower()]
    pick = named or list(tensors)
    if len(pick) == 1:
        return tensors[pick[0]]
    if not pick:
        raise CLIError(f"no (N, D) prompt tensor in checkpoint {path}")
    shown = ", ".join(pick[:5]) + (f" and {len(pick) - 5} more" if len(pick) > 5 else "")
    raise CLIError(f"checkpoint {path}: {len(pick)} (N, D) tensors could be the prompt ({shown}); "
                   f"save the prompt alone or under one of the keys {', '.join(PREFERRED_KEYS)}")


def _read(path: str) -> object:
    """The object in a checkpoint file: a safetensors file's dict, else torch.load's."""
    if path.endswith(".safetensors"):
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise CLIError(f"reading {path} needs the safetensors package: "
                           "pip install safetensors") from None
        try:
            return load_file(path, device="cpu")
        except Exception as exc:  # safetensors raises its own error types for bad files
            raise CLIError(f"cannot read checkpoint {path}: not a safetensors file "
                           f"({type(exc).__name__})") from None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for bad files
        # torch's own first line is a bare key or a page of weights_only advice
        raise CLIError(f"cannot read checkpoint {path}: not a tensor file written by "
                       f"torch.save ({type(exc).__name__})") from None


#: PEFT adapter types whose saved ``prompt_embeddings`` are the prompt's N token vectors
#: (prefix tuning saves per-layer keys and values instead).
PROMPT_ADAPTERS = ("PROMPT_TUNING", "P_TUNING")


def _check_adapter(path: str) -> None:
    """Refuse a PEFT adapter whose saved tensor is no single prompt, by its adapter_config.json."""
    config = os.path.join(os.path.dirname(path), "adapter_config.json")
    if not os.path.basename(path).startswith("adapter_model.") or not os.path.isfile(config):
        return
    try:
        with open(config) as f:
            cfg = json.load(f)
        kind, parts = cfg.get("peft_type"), cfg.get("num_transformer_submodules") or 1
    except (OSError, ValueError, AttributeError):
        return  # unreadable: the tensor's own checks below still apply
    if kind not in PROMPT_ADAPTERS:
        raise CLIError(f"checkpoint {path}: a {kind} adapter, whose tensors are not a prompt's "
                       f"token vectors; analyze reads {' and '.join(PROMPT_ADAPTERS)} adapters")
    if parts != 1:
        raise CLIError(f"checkpoint {path}: the adapter holds {parts} prompts, one per "
                       "transformer submodule (an encoder-decoder model's), stacked; analyze "
                       "reads one prompt")


def load_prompt(path: str) -> torch.Tensor:
    """The ``(N, D)`` prompt stored in a ``.pt``, ``.bin`` or ``.safetensors`` file, as
    float32."""
    _check_adapter(path)
    obj = _read(path)
    if isinstance(obj, torch.Tensor):
        t = obj
    elif isinstance(obj, dict):
        t = _prompt_entry(obj, path)
    else:
        raise CLIError(f"checkpoint {path} holds a {type(obj).__name__}, not a prompt tensor")
    if t.layout != torch.strided:  # torch's checks below would name aten ops, not the file
        raise CLIError(f"checkpoint {path}: a {t.layout} tensor; analyze reads dense prompts")
    if t.dim() != 2 or not t.is_floating_point() or t.shape[0] < 1 or t.shape[1] < 1:
        raise CLIError(f"checkpoint {path}: expected a float (N, D) prompt, got "
                       f"{tuple(t.shape)} {t.dtype}")
    if t.shape[0] > MAX_POINTS:
        raise CLIError(f"checkpoint {path}: {t.shape[0]} token vectors, more than the "
                       f"{MAX_POINTS} points a cloud that tsloss_cuda computes")
    if not torch.isfinite(t).all():
        raise CLIError(f"checkpoint {path}: the prompt holds NaN or Inf values (a diverged "
                       "run?), whose topology is undefined")
    from tsloss_cuda.tracking import cpu_engine_refuses
    x = t.float()
    if cpu_engine_refuses(x):
        raise CLIError(f"checkpoint {path}: the prompt's values (up to "
                       f"{float(t.detach().abs().max()):.3g}) or distances are past float32's "
                       "range, in which analyze computes (a diverged run?)")
    return x


def _adapter_file(folder: str) -> Optional[str]:
    return next((f for f in ADAPTER_FILES if os.path.isfile(os.path.join(folder, f))), None)


def _trainer_adapters(folder: str, entries: List[str]) -> List[str]:
    """``checkpoint-STEP/adapter_model.*`` of a Trainer's output folder, relative to it; PEFT
    saves an adapter not named "default" one folder deeper, ``checkpoint-STEP/NAME/``."""
    found = []
    for n in entries:
        sub = os.path.join(folder, n)
        if not (n.startswith("checkpoint-") and os.path.isdir(sub)):
            continue
        have = _adapter_file(sub)
        if have:
            found.append(os.path.join(n, have))
            continue
        named = sorted((a, f) for a in os.listdir(sub) if os.path.isdir(os.path.join(sub, a))
                       for f in [_adapter_file(os.path.join(sub, a))] if f)
        if len(named) > 1:
            raise CLIError(f"DIR: {sub} holds {len(named)} PEFT adapters "
                           f"({', '.join(a for a, _ in named)}); analyze reads one prompt a step")
        found += [os.path.join(n, a, f) for a, f in named]
    return found


def list_checkpoints(folder: str) -> Tuple[List[str], List[int], bool]:
    """(paths, steps, whether every step came from the name) in step order: the adapters of
    ``folder``'s ``checkpoint-STEP`` folders where it is a Trainer's output folder, else the
    checkpoint files in ``folder``. Names that all hold a step but hold one step twice are
    refused (a :class:`CLIError` naming them); names without steps go in name order."""
    if not os.path.isdir(folder):
        raise CLIError(f"DIR: not a folder: {folder}")
    try:
        entries = os.listdir(folder)
    except OSError as exc:
        raise CLIError(f"DIR: cannot read folder {folder}: {exc.strerror}") from None
    # A Trainer's folder: its checkpoints, not the final adapter save_model may put beside them.
    names = _trainer_adapters(folder, entries) or [n for n in entries if n.endswith(EXTENSIONS)]
    if not names:
        raise CLIError(f"DIR: no .pt or .safetensors checkpoints, nor Trainer checkpoint-STEP "
                       f"folders with a PEFT adapter, in {folder}")
    found = {n: checkpoint_step(n) for n in names}
    numbered = {n: s for n, s in found.items() if s is not None}
    named = len(numbered) == len(found)
    if named:
        names.sort(key=lambda n: (numbered[n], n))
        steps = [numbered[n] for n in names]
        # Two files of one step (step_10.pt and step_10.safetensors, two runs' step_10): name
        # order instead would put step_10 before step_2 and drop ts_stability without a word.
        twice = next((s for s, t in zip(steps, steps[1:]) if s == t), None)
        if twice is not None:
            same = [n for n in names if numbered[n] == twice]
            raise CLIError(f"DIR: {folder} holds {len(same)} checkpoints of step {twice} "
                           f"({', '.join(same)}); analyze reads one training run's checkpoints, "
                           "one per step")
    else:  # not one training run's steps: the checkpoints in name order, numbered 0, 1, ...
        names.sort()
        steps = list(range(len(names)))
    return [os.path.join(folder, n) for n in names], steps, named


def default_output_dir(folder: str) -> str:
    """``DIR_analysis`` beside DIR: the checkpoint folder itself is left as it was.

    ``.`` and ``..`` are named by their absolute path (``cd runs/x; analyze .`` writes
    ``runs/x_analysis``); the root, which has no name, gives ``root_analysis`` in the current
    folder.
    """
    path = os.path.normpath(folder)
    if os.path.basename(path) in ("", ".", ".."):
        path = os.path.abspath(path)
    parent, name = os.path.split(path)
    if not name:
        return os.path.abspath("root_analysis")
    return os.path.join(parent, name + "_analysis")


def analyze(folder: str, out_dir: Optional[str] = None, device: str = "cpu",
            plots: bool = True) -> List[Dict[str, Union[float, str]]]:
    """Metrics rows (one per checkpoint; its ``checkpoint`` name a str) and, with ``plots``, the
    PNG figures in ``out_dir``."""
    from tsloss_cuda.persistence import vr_persistence
    from tsloss_cuda.tracking import TopologyTracker

    if device not in ("cpu", "cuda"):
        raise CLIError(f"--device must be cpu or cuda, got {device!r}")
    check_device(device)
    paths, steps, named = list_checkpoints(folder)
    out_dir = out_dir or default_output_dir(folder)
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise CLIError(f"--output-dir {out_dir} exists and is not a folder")
    check_writable(out_dir, "--output-dir", "topology_metrics.csv")  # before the work
    prompts = [load_prompt(p) for p in paths]  # every file read before anything is written
    dev = torch.device(device)
    tracker = TopologyTracker(1, tsloss_terms=True)
    snaps = {}
    keep = {0, len(paths) // 2, len(paths) - 1}
    for i, (step, prompt) in enumerate(zip(steps, prompts)):
        p = prompt.to(dev)
        tracker.update(step, p)
        if i in keep:  # on the CPU, as the job's snapshots (no device workspace to overflow)
            snaps[f"step {step}" if named else os.path.relpath(paths[i], folder)] = \
                vr_persistence(prompt).to_numpy()[0]
    rows: List[Dict[str, Union[float, str]]] = [dict(r) for r in tracker.flush()]
    for row, path in zip(rows, paths):
        row["checkpoint"] = os.path.relpath(path, folder)  # checkpoint-10/adapter_model...
        if not named:  # the previous file is no earlier state of this prompt
            row.pop("ts_stability", None)
    os.makedirs(out_dir, exist_ok=True)
    cols = ["step", "checkpoint"] + [k for k in rows[0] if k not in ("step", "checkpoint")]
    with open(os.path.join(out_dir, "topology_metrics.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        w.writerows(rows)
    if plots:
        from tsloss_cuda import plots as P
        name = os.path.basename(os.path.abspath(folder)) or folder  # "." by its name
        xlabel = "training step" if named else "checkpoint (file name order)"
        P.plot_topology({name: rows}, os.path.join(out_dir, "topology.png"), xlabel=xlabel,
                        title=f"Prompt topology of the checkpoints in {name}",
                        xticklabels=None if named else [str(r["checkpoint"]) for r in rows])
        P.plot_diagrams(snaps, os.path.join(out_dir, "diagrams.png"),
                        title=f"Persistence of the prompts in {name}")
    return rows


def build_parser() -> argparse.ArgumentParser:
    ap = Parser(prog=PROG, description=__doc__,
                formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder", metavar="DIR", help="folder of .pt or .safetensors prompt "
                    "checkpoints, or a Trainer's output folder (checkpoint-STEP/adapter_model.*)")
    ap.add_argument("--output-dir", default=None,
                    help="where outputs go (default: DIR_analysis, beside DIR)")
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"),
                    help="where the persistence computations run: " + DEVICE_HELP)
    ap.add_argument("--no-plots", action="store_true", help="CSV only")
    return ap


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        out = args.output_dir or default_output_dir(args.folder)
        rows = analyze(args.folder, out, args.device, not args.no_plots)
        print(f"analysed {len(rows)} checkpoints; outputs in {out}")
        return 0

    return run_main(PROG, body)


if __name__ == "__main__":
    sys.exit(main())
