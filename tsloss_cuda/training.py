"""One run of the soft-prompt job (``python -m tsloss_cuda.train``): its regulariser, the
data-parallel helpers under ``torchrun``, evaluation, and the training loop :func:`train_one`.

A run whose prompt (or head) turns NaN or Inf stops training there and logs NaN rows, so a
comparison records it instead of stopping (``docs/outputs.md``).
"""
from __future__ import annotations

import math
import os
import sys
from typing import Callable, Dict, List, Optional, Tuple

import torch

from ._cli import CLIError, check_device
from .models import check_token_ids
from .run_outputs import checkpoint_folder, checkpoint_name, run_id as run_name
from .tasks import batch, frequent_tokens

REGULARIZERS = ("none", "l2", "pairwise", "tsloss")
#: torch generators take seeds below 2**64, and a run's data order is seeded with 1000 + seed.
MAX_SEED = 2 ** 64 - 1 - 1000
#: Adam's first step moves each coordinate by about lr: its step size, lr / (1 - beta1), is a
#: float32 scalar (past 3.4e37 a RuntimeError), and the prompt's topology needs its distances,
#: up to 2 lr sqrt(D), in float32 (past about 4e36 for D = 384, a RuntimeError). Below this
#: bound a prompt grown too large turns the model's output NaN (its norms square it): a
#: divergence, which the run records.
MAX_LR = 1e30
#: Defaults of the job's flags that only some runs use (compare.check_run_flags refuses one
#: given where no run uses it; its argparse default is None so that it can tell).
RUN_FLAG_DEFAULTS = {"reg_weight": 0.1, "ts_connectivity": 1.0, "ts_redundancy": 1.0,
                     "ts_stability": 0.0, "head": "similarity", "head_lr": 0.005}

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

def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    if not value:
        return default
    try:
        return int(value)
    except ValueError:
        raise CLIError(f"${name} must be a whole number (torchrun sets it), got {value!r}") from None


def launch_rank() -> int:
    """This process's rank in a torchrun job (0 outside one)."""
    return _env_int("RANK", 0)


class Dist:
    """World info; ``world == 1`` means plain single-process training."""

    def __init__(self, device: str) -> None:
        self.world = _env_int("WORLD_SIZE", 1)
        self.rank = launch_rank()
        local = _env_int("LOCAL_RANK", 0)
        if not 0 <= self.rank < self.world:  # a RANK left set without torchrun's WORLD_SIZE
            # trained and then wrote nothing, as a rank other than 0 does
            raise CLIError(f"$RANK {self.rank} must be from 0 to $WORLD_SIZE - 1 = "
                           f"{self.world - 1}: run under torchrun, or unset RANK")
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
        grads: List[torch.Tensor] = []
        for p in params:
            assert p.grad is not None  # called after the backward, which gives each one
            grads.append(p.grad)
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= self.world
        off = 0
        for g in grads:
            n = g.numel()
            g.copy_(flat[off:off + n].view_as(g))
            off += n

    def mean(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` averaged over the ranks (every rank must call it): a logged task loss is the
        global batch's, not rank 0's share of it."""
        if self.world == 1:
            return t
        import torch.distributed as dist
        t = t.clone()
        dist.all_reduce(t)
        return t / self.world

    def close(self) -> None:
        if self.world > 1:
            import torch.distributed as dist
            dist.barrier()
            dist.destroy_process_group()


# ---------------------------------------------------------------------------------------------
# training

@torch.inference_mode()
def evaluate(spm, data: Dict[str, torch.Tensor], device, batch_size: int = 64) -> float:
    """Validation accuracy (one host read per call)."""
    correct = torch.zeros((), device=device)
    m = data["y"].shape[0]
    for s in range(0, m, batch_size):
        b = batch(data, torch.arange(s, min(s + batch_size, m)), device)
        correct += (spm(b["input_ids"], b["attention_mask"])["logits"].argmax(-1)
                    == b["labels"]).sum()
    return float(correct) / m


def init_text_ids(args, tok, model) -> List[int]:
    """The token ids of ``--init-text`` (``--init text``); checked before the job writes."""
    ids = tok.encode(args.init_text or "", add_special_tokens=False)
    if not ids:
        raise CLIError("--init-text: the text has no tokens")
    check_token_ids(model, {"init": {"ids": torch.tensor(ids)}})
    return ids


def build_prompt_model(args, tok, model, task: str, data, n_labels: int,
                       gen: torch.Generator):
    """The :class:`SoftPromptModel` of one run, as the flags ask."""
    from tsloss_cuda.prompt_tuning import SoftPromptModel
    split = data["train"]
    init, init_ids = args.init, None
    if init == "text":
        init_ids = init_text_ids(args, tok, model)
    elif init == "frequent":
        init, init_ids = "vocab", frequent_tokens(split, tok.all_special_ids)
    label_inputs = (split["label_ids"], split["label_mask"]) if task == "encoder" else None
    return SoftPromptModel(model, args.prompt_length, task=task, num_labels=n_labels,
                           label_ids=split["label_ids"] if task == "causal" else None,
                           label_inputs=label_inputs, head=args.head, init=init,
                           init_ids=init_ids, generator=gen)


def check_global_batch(batch_size: int, world: int, m: int) -> Optional[str]:
    """Ranks take consecutive slices of one shuffled global batch and average their gradients
    with equal weights, so each needs a full slice: past ``m`` rows a rank's slice was short or
    empty (an error in ``tasks.batch``), refused. One process just takes all ``m`` rows: the
    warning to print is returned (None if the batch fits)."""
    if world > 1 and batch_size * world > m:
        raise CLIError(f"--batch-size {batch_size} x {world} ranks is {batch_size * world} "
                       f"examples a step, more than the {m} training rows: lower --batch-size")
    if batch_size > m:
        return (f"--batch-size {batch_size} is more than the {m} training rows: each step "
                f"takes all {m}")
    return None


def train_one(args, reg_name: str, seed: int, tok, model, task: str, data, n_labels: int,
              dist: Dist, run_dir: Optional[str], progress_pos: int = 0,
              run_id: Optional[str] = None) -> Dict:
    """Train one prompt; returns rows, timings, snapshots and the final prompt (rank 0 view).

    ``run_id`` names the checkpoint folder and the progress bar (default ``REG_seedS``). The
    checkpoints are staged under ``run_dir``: the caller moves them into place once the run's
    outputs are written (``run_outputs.commit_checkpoints``), or removes them
    (``discard_checkpoints``), so a run that does not finish leaves the earlier one's.

    Each row describes the prompt after ``step`` updates (the one saved as its checkpoint):
    validation accuracy, topology and TSLoss terms. ``task_loss``/``reg_loss`` are the means
    over the training steps since the previous row; step 0's are those of step 1, whose batch
    is computed at the initial prompt.
    """
    from tsloss_cuda.persistence import vr_persistence
    from tsloss_cuda.tracking import StepTimer, TopologyTracker, to_floats
    from tqdm.auto import tqdm

    dev = dist.device
    # The generators the run draws from (a linear head's init on the CPU, the job's device),
    # not torch.manual_seed's every CUDA device, which it would also queue for a CUDA not yet
    # started: the job gives back only the states it saved (train.run).
    torch.default_generator.manual_seed(seed)
    if dev.type == "cuda":
        torch.cuda.manual_seed(seed)  # the current device: the job's (Dist sets it)
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
    global_b = args.batch_size * dist.world  # past m only in one process (check_global_batch)
    order = torch.Generator().manual_seed(1000 + seed)  # same permutation on every rank
    perm, pos = torch.randperm(m, generator=order), 0

    rows: List[Dict] = []
    snapshots: Dict[str, list] = {}
    snap_steps = {0, args.max_steps // 2, args.max_steps}
    def new_sums() -> Tuple[torch.Tensor, torch.Tensor, int]:
        """The losses summed since the last row: task, regulariser, steps."""
        return torch.zeros((), device=dev), torch.zeros((), device=dev), 0

    loss_acc, reg_acc, n_acc = new_sums()
    timer = StepTimer(dev)  # CUDA events: no host sync per step
    steps_to_target = None
    every = args.log_every if args.checkpoint_every is None else args.checkpoint_every
    run_id = run_id or run_name({"regularizer": reg_name, "seed": seed})
    ckpt_dir = None
    if run_dir and dist.main:  # staged: the caller commits or discards them (run_outputs)
        folder = checkpoint_folder(run_dir, run_id, keep=bool(every))
        ckpt_dir = folder if every else None

    # The step at which the trained tensors were found not finite: on the CPU the first such
    # step, on a GPU the first log, checkpoint, snapshot or last step after it.
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
                       os.path.join(ckpt_dir, checkpoint_name(step)))
        if dist.main and step in snap_steps:  # logged or not (--log-every)
            # On the CPU engine (the same bits as CUDA's): it has no fixed workspace to
            # overflow, which on the device would make to_numpy stop the run for a plot.
            snapshots[f"step {step}"] = vr_persistence(
                spm.prompt.detach().float().cpu()).to_numpy()[0]

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
        loss_acc, reg_acc, n_acc = new_sums()
        # A non-finite prompt's logits are NaN, and argmax would count them as class 0.
        row["val_acc"] = evaluate(spm, val, dev) if diverged is None else math.nan
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
        b = batch(train, idx, dev)
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
        logging = step % args.log_every == 0 or step == args.max_steps
        if step == 1:  # step 1's losses were computed at the initial prompt
            first = dist.mean(task_loss.detach())  # a collective: every rank
            if dist.main:
                rows[0].update(to_floats({"task_loss": first, "reg_loss": reg_acc}))
        if logging:  # the ranks' batches are one global batch: their mean, on every rank
            loss_acc = dist.mean(loss_acc)
            if not dist.main:  # the main rank's log() starts the next row's sums
                loss_acc, reg_acc, n_acc = new_sums()
        if dist.main and logging:
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
            "reg_share": reg_time / step_time if step_time > 0 else 0.0,
            # Its own: a resumed comparison reuses runs checkpointed at another interval.
            "checkpoint_every": every}
