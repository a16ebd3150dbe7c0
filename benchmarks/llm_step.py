"""Time one soft-prompt training step of the Gemma job, before and after answer-position logits.

    python benchmarks/llm_step.py                     # gemma-3-270m from the model cache
    python benchmarks/llm_step.py --model PATH --threads 1 2 --steps 5

A step is forward, backward into the prompt and an Adam update, on a batch of
``--batch`` × (``--prompt`` soft tokens + ``--text`` text tokens), float32. Variants:

* ``full-vocab``: the LM with ``labels`` (the old path): logits over the whole vocabulary
  at every position, loss on the answer token;
* ``last-pos-vocab``: the LM's logits at the last position only (``logits_to_keep=1``);
* ``answer-C``: the decoder body, then the C label rows of the LM head at the answer
  position (:class:`tsloss_cuda.prompt_tuning.SoftPromptModel`);
* ``answer-C eager``: the same with eager instead of SDPA attention.

Prints a Markdown table of the median seconds per step, then, per thread count, how much of
an answer-C step is matrix products, the sgemm rate at the step's MLP shape, and the time
the step's matrix-product FLOPs (counted by ``torch.utils.flop_counter``, which leaves out
the products inside SDPA attention, ~1 % here) need at that rate: an estimate of the floor, as
the rate is one shape's, that a float32 step on these threads cannot go much below without
doing less arithmetic.

``--torch-isa avx2`` caps torch's own kernels, MKL and oneDNN at AVX2 (it sets
``ATEN_CPU_CAPABILITY``, ``MKL_ENABLE_INSTRUCTIONS`` and ``ONEDNN_MAX_CPU_ISA`` before torch
loads), to time the AVX2 code path on an AVX-512 machine. That is the AVX2 instruction set on
this core, not an AVX2-only CPU: clocks, caches and memory stay this machine's.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from typing import Callable, List, cast

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# The ISA cap must be in the environment before torch loads MKL and oneDNN, so it is read
# from argv here; argparse below validates and documents it.
_isa = argparse.ArgumentParser(add_help=False)
_isa.add_argument("--torch-isa")
if _isa.parse_known_args()[0].torch_isa == "avx2":
    os.environ.update(ATEN_CPU_CAPABILITY="avx2", MKL_ENABLE_INSTRUCTIONS="AVX2",
                      ONEDNN_MAX_CPU_ISA="AVX2")

import torch  # noqa: E402

from tsloss_cuda._cli import CLIError, first_line, positive_int  # noqa: E402
from tsloss_cuda.models import GEMMA, load_model  # noqa: E402
from tsloss_cuda.prompt_tuning import SoftPromptModel  # noqa: E402


def median_step(step: Callable[[], torch.Tensor], prompt: torch.nn.Parameter,
                steps: int) -> float:
    """Median seconds of ``steps`` timed steps after one warm-up."""
    opt = torch.optim.Adam([prompt], lr=1e-3)
    times: List[float] = []
    for i in range(steps + 1):
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=False)
        step().backward()
        opt.step()
        if i:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def gemm_share(step: Callable[[], torch.Tensor]) -> float:
    """Fraction of one step's profiled CPU time spent in matrix products."""
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step().backward()
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    mm = sum(e.self_cpu_time_total for e in events if e.key in ("aten::mm", "aten::addmm",
                                                                 "aten::bmm"))
    return mm / max(total, 1)


def gemm_gflop(step: Callable[[], torch.Tensor]) -> float:
    """GFLOP of matrix products in one forward and backward."""
    from torch.utils.flop_counter import FlopCounterMode
    with FlopCounterMode(display=False) as count:
        step().backward()
    return count.get_total_flops() / 1e9


def sgemm_gflops(rows: int, hidden: int, inner: int, reps: int = 30) -> float:
    """GFLOP/s of a float32 (rows x hidden) @ (hidden x inner) product, median of ``reps``."""
    a, w = torch.randn(rows, hidden), torch.randn(hidden, inner)
    for _ in range(3):
        a @ w
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        a @ w
        times.append(time.perf_counter() - t0)
    return 2 * rows * hidden * inner / statistics.median(times) / 1e9


VARIANTS = ("full-vocab", "last-pos-vocab", "answer-C", "answer-C eager")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=GEMMA)
    ap.add_argument("--threads", type=positive_int, nargs="+", default=[1, 2])
    ap.add_argument("--steps", type=positive_int, default=3, help="timed steps per variant")
    ap.add_argument("--batch", type=positive_int, default=8)
    ap.add_argument("--prompt", type=positive_int, default=8)
    ap.add_argument("--text", type=positive_int, default=32)
    ap.add_argument("--variants", default="full-vocab,last-pos-vocab,answer-C,answer-C eager")
    ap.add_argument("--torch-isa", choices=["native", "avx2"], default="native",
                    help="avx2: cap torch, MKL and oneDNN at AVX2 (see the module doc)")
    args = ap.parse_args(argv)
    # Checked before the model loads (20 s and more): a bad name failed only after it.
    names = [n.strip() for n in args.variants.split(",")]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        ap.error(f"--variants: unknown {', '.join(map(repr, unknown))}; known: "
                 f"{', '.join(VARIANTS)}")
    if args.torch_isa == "avx2" and os.environ.get("ATEN_CPU_CAPABILITY") != "avx2":
        ap.error("--torch-isa avx2 must be on the command line: the cap is set before torch "
                 "loads (this process already loaded it)")

    try:
        tok, loaded, _ = load_model(args.model, "causal", torch.device("cpu"), quiet=True)
        from transformers import PreTrainedModel
        model = cast(PreTrainedModel, loaded)  # a causal LM: load_model's task is "causal"
    except CLIError as e:
        ap.error(str(e))  # it names --model
    g = torch.Generator().manual_seed(0)
    weight = model.get_input_embeddings().weight
    assert isinstance(weight, torch.Tensor)
    v = weight.shape[0]
    ids = torch.randint(10, min(v, 30000), (args.batch, args.text), generator=g)
    mask = torch.ones_like(ids)
    label_ids = torch.tensor([5676, 12643, 4414]) % v  # Gemma's " negative/neutral/positive"
    y = torch.arange(args.batch) % 3
    try:
        spm = SoftPromptModel(model, args.prompt, task="causal", label_ids=label_ids,
                              generator=g)
    except ValueError as e:  # an encoder: a traceback before, whose advice (--task) is not ours
        reason = first_line(e).split("; use task")[0]
        ap.error(f"--model {args.model}: needs a causal LM ({reason})")
    # The old path's labels: -100 everywhere but the answer token after the last position.
    full_ids = torch.cat([ids, label_ids[y][:, None]], 1)
    lm_labels = torch.full((args.batch, args.prompt + args.text + 1), -100)
    lm_labels[:, -1] = label_ids[y]

    def full_vocab() -> torch.Tensor:
        emb, m = spm._embed(full_ids, torch.ones_like(full_ids))
        return model(inputs_embeds=emb, attention_mask=m, labels=lm_labels,
                     use_cache=False).loss

    def last_pos_vocab() -> torch.Tensor:
        emb, m = spm._embed(ids, mask)
        logits = model(inputs_embeds=emb, attention_mask=m, logits_to_keep=1,
                       use_cache=False).logits[:, -1]
        return torch.nn.functional.cross_entropy(logits.float(), label_ids[y])

    def answer_c() -> torch.Tensor:
        return spm(ids, mask, labels=y)["loss"]

    fns = {"full-vocab": full_vocab, "last-pos-vocab": last_pos_vocab, "answer-C": answer_c,
           "answer-C eager": answer_c}
    assert set(fns) == set(VARIANTS)
    print(f"{args.model}: batch {args.batch} x ({args.prompt} prompt + {args.text} text) "
          f"tokens, float32, median of {args.steps} steps (s/step), torch ISA "
          f"{torch.backends.cpu.get_cpu_capability()}\n")
    print("| variant | " + " | ".join(f"{t} thread{'s' * (t > 1)}" for t in args.threads) + " |")
    print("|---|" + "---|" * len(args.threads))
    for name in names:
        model.set_attn_implementation("eager" if name.endswith("eager") else "sdpa")
        cells = []
        for t in args.threads:
            torch.set_num_threads(t)
            cells.append(f"{median_step(fns[name], spm.prompt, args.steps):.2f}")
        print(f"| {name} | " + " | ".join(cells) + " |", flush=True)
    model.set_attn_implementation("sdpa")
    cfg = model.config
    rows = args.batch * (args.prompt + args.text)
    flop = gemm_gflop(answer_c)
    print(f"\nanswer-C step: {flop:.4g} GFLOP in matrix products (forward and backward)")
    for t in args.threads:
        torch.set_num_threads(t)
        rate = sgemm_gflops(rows, cfg.hidden_size, cfg.intermediate_size)
        print(f"{t} thread{'s' * (t > 1)}: answer-C step {100 * gemm_share(answer_c):.0f} % in "
              f"matrix products; sgemm ({rows} x {cfg.hidden_size}) @ ({cfg.hidden_size} x "
              f"{cfg.intermediate_size}) {rate:.0f} GFLOP/s, at which the step's products "
              f"alone take {flop / rate:.2f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
