"""Resumable comparison of regularisers: each run is written as soon as it finishes.

Layout of the output folder::

    comparison.json         the configuration, every run spec ever asked for, and the run
                            ids of the last invocation (``last``, what a report shows)
    runs/<run_id>.json      one finished run: spec, summary fields, metrics rows, snapshots,
                            and its provenance (world size, data file sha256, package version)
    prompts/prompt_<run_id>.pt   its final (N, D) prompt

Started again on the same folder with the same configuration, :func:`run_comparison` loads the
finished runs and trains only the missing ones, so a long comparison survives an interruption.
A different configuration for the same folder, a finished run of another provenance, or a
``runs/`` folder without its ``comparison.json`` is refused (one line naming ``--output-dir``).
Files are written to a temporary name and renamed, so a killed job leaves no half-written run.
"""
from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import math
import os
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch

from . import run_outputs
from ._cli import CLIError, check_writable, first_line
from ._files import atomic_write, deferred_sigint, remove_leftovers
from .models import GEMMA
from .training import REGULARIZERS, RUN_FLAG_DEFAULTS, launch_rank

CONFIG_FILE = "comparison.json"
#: Key of a run's record holding :func:`provenance`.
PROVENANCE = "provenance"
#: Result keys kept out of ``runs/<id>.json`` (the prompt has its own file).
_NOT_IN_JSON = ("prompt",)


@dataclass(frozen=True)
class RunSpec:
    """One named run of a comparison.

    regularizer: ``none``, ``l2``, ``pairwise`` or ``tsloss``. seed: seeds the prompt's
    initialisation and the data order. overrides: ``(name, value)`` pairs set on the job's
    arguments for this run only (e.g. ``("reg_weight", 0.3)``). name: the variant, shared by all
    seeds (default: the regulariser).
    """

    regularizer: str
    seed: int
    overrides: Tuple[Tuple[str, float], ...] = ()
    name: str = ""

    @property
    def variant(self) -> str:
        return self.name or self.regularizer

    @property
    def run_id(self) -> str:
        """Stable file name of the run, e.g. ``tsloss_w0.3_seed3``."""
        return run_outputs.run_id(self.to_json())

    def to_json(self) -> Dict[str, Any]:
        return {"regularizer": self.regularizer, "seed": self.seed, "variant": self.variant,
                "overrides": dict(self.overrides)}


def comparison_specs(regs: Sequence[str], seeds: Sequence[int], weights: Sequence[float] = (),
                     stability_weight: float = 0.0, base_weight: Optional[float] = None
                     ) -> List[RunSpec]:
    """The runs of ``--compare``: every regulariser, ``tsloss_stab`` and a TSLoss weight sweep.

    Args:
        regs: regularisers run at the job's own settings (e.g. none, l2, pairwise, tsloss).
        seeds: every variant runs with each seed (the seed fixes the data order, so runs pair
            by seed).
        weights: TSLoss weights of the sweep, variants ``tsloss_w<weight>``; a weight equal to
            ``base_weight`` is the plain ``tsloss`` variant and is not run twice.
        stability_weight: > 0 adds ``tsloss_stab``: TSLoss with this stability weight.
        base_weight: the job's ``--reg-weight``.

    Returns:
        specs ordered seed-major (every variant of seed 0 first), so an interrupted
        comparison already holds complete seeds to pair.
    """
    variants: List[Tuple[str, Tuple[Tuple[str, float], ...], str]] = [(r, (), "") for r in regs]
    if stability_weight > 0:
        variants.append(("tsloss", (("ts_stability", float(stability_weight)),), "tsloss_stab"))
    for w in weights:
        if base_weight is not None and math.isclose(w, base_weight) and "tsloss" in regs:
            continue
        variants.append(("tsloss", (("reg_weight", float(w)),), f"tsloss_w{w:g}"))
    return [RunSpec(r, int(s), o, n) for s in seeds for r, o, n in variants]


#: Each mode's own flags of the training job: dest -> (default, the other mode's flag for the
#: same thing). Their argparse default (``train.build_parser``) is None, so that one given in
#: the other mode, which would ignore it, is told from one left out (whatever its value) and
#: refused; :func:`check_mode_flags` then sets the defaults.
SINGLE_FLAGS = {"seed": (0, "--seeds"), "regularizer": ("tsloss", "--compare-regularizers")}
COMPARE_FLAGS = {"seeds": ([0, 1, 2], "--seed"),
                 "compare_regularizers": (list(REGULARIZERS), "--regularizer"),
                 "compare_weights": ([], None), "compare_stability": (0.0, None)}


def check_mode_flags(args: Any) -> None:
    """Refuse the other mode's flags, which it would ignore; set the defaults of those not given
    (both modes', so the recorded configuration is as before)."""
    other = SINGLE_FLAGS if args.compare else COMPARE_FLAGS
    for dest, (_, instead) in other.items():
        if getattr(args, dest) is not None:
            flag = "--" + dest.replace("_", "-")
            if args.compare:
                raise CLIError(f"{flag} is an option of a single run, which --compare ignores: "
                               f"use {instead}")
            raise CLIError(f"{flag} is an option of --compare, which a single run ignores: add "
                           "--compare" + (f", or use {instead}" if instead else ""))
    for dest, (default, _) in {**SINGLE_FLAGS, **COMPARE_FLAGS}.items():
        if getattr(args, dest) is None:
            setattr(args, dest, default)


def _tsloss_weight(dest: str) -> Callable[[Any, "RunSpec"], bool]:
    return lambda args, spec: spec.regularizer == "tsloss" and dest not in dict(spec.overrides)


def _causal(args: Any) -> bool:
    """Whether the job's model is known to be tuned as a causal LM before it is loaded."""
    return args.task == "causal" or args.model == GEMMA


def _regularizers(args: Any, specs: Sequence["RunSpec"]) -> str:
    if not args.compare:
        return f"--regularizer {args.regularizer}"
    return "its variants: " + ", ".join(dict.fromkeys(spec.variant for spec in specs))


#: Of each flag in :data:`~tsloss_cuda.training.RUN_FLAG_DEFAULTS` (and ``--init-text``,
#: ``--model-cache``):
#: whether a run uses it (the job's arguments, the run's spec), what it is, and what made the
#: job's runs leave it unused.
_RUN_FLAG_USES = {
    "reg_weight": (lambda args, spec: spec.regularizer != "none"
                   and "reg_weight" not in dict(spec.overrides), "a regulariser's weight",
                   _regularizers),
    "ts_connectivity": (_tsloss_weight("ts_connectivity"), "a TSLoss weight", _regularizers),
    "ts_redundancy": (_tsloss_weight("ts_redundancy"), "a TSLoss weight", _regularizers),
    "ts_stability": (_tsloss_weight("ts_stability"), "a TSLoss weight", _regularizers),
    "head_lr": (lambda args, spec: args.head == "linear", "an option of --head linear",
                lambda args, specs: "a causal LM has no head" if _causal(args)
                else f"--head {args.head or RUN_FLAG_DEFAULTS['head']}"),
    "init_text": (lambda args, spec: args.init == "text", "an option of --init text",
                  lambda args, specs: f"--init {args.init}"),
    "model_cache": (lambda args, spec: args.model == GEMMA,
                    f"the folder --model {GEMMA} is converted into",
                    lambda args, specs: f"--model {args.model}"),
}


def check_run_flags(args: Any, specs: Sequence["RunSpec"], given: Sequence[str]) -> None:
    """Refuse (a :class:`CLIError`) a flag among ``given`` (dests) that no run of ``specs``
    uses, as :func:`check_mode_flags` refuses the other mode's: it would be ignored, and
    recorded in the outputs as if it had been used."""
    for dest in given:
        uses, what, why = _RUN_FLAG_USES[dest]
        if not any(uses(args, spec) for spec in specs):
            job = "no run of this comparison uses" if args.compare else "this run does not use"
            raise CLIError(f"--{dest.replace('_', '-')} is {what}, which {job} "
                           f"({why(args, specs)})")


def settle_head(args: Any, task: str, loaded: bool = True) -> None:
    """Refuse ``--head`` for a causal LM (which predicts the labels as next words: no head);
    once the model is ``loaded``, set its default. Called before too, where the ``task`` is
    already known (``--task``, the named causal LM), so that the refusal comes first."""
    if task == "causal" and args.head is not None:
        tuned = "--task causal" if args.task == "causal" else f"{args.model}, a causal LM,"
        raise CLIError(f"--head is an option of an encoder; {tuned} predicts the labels as next "
                       "words, with no head")
    if args.head is None and loaded:
        args.head = RUN_FLAG_DEFAULTS["head"]


def job_specs(args: Any) -> List[RunSpec]:
    """The runs of the training job's arguments ``args`` (an ``argparse.Namespace``): the single
    run's, or :func:`comparison_specs` for ``--compare``. Refuses (a :class:`CLIError`) the
    other mode's flags (:func:`check_mode_flags`, which also sets the defaults) and a repeated
    value of ``--seeds``, ``--compare-regularizers`` or ``--compare-weights``."""
    check_mode_flags(args)
    given = [d for d in _RUN_FLAG_USES if getattr(args, d) is not None]
    for dest, default in RUN_FLAG_DEFAULTS.items():
        if dest != "head" and getattr(args, dest) is None:  # the head waits for the model
            setattr(args, dest, default)
    if not args.compare:
        specs = [RunSpec(args.regularizer, args.seed)]
        check_run_flags(args, specs, given)
        return specs
    # Each run is named by its variant and seed: a repeated value would name two runs alike.
    for flag, names in (("--seeds", [str(s) for s in args.seeds]),
                        ("--compare-regularizers", list(args.compare_regularizers)),
                        ("--compare-weights", [f"{w:g}" for w in args.compare_weights or []])):
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise CLIError(f"{flag} repeats {', '.join(repeated)}: each value names runs once")
    specs = comparison_specs(list(args.compare_regularizers), args.seeds, args.compare_weights,
                             args.compare_stability, args.reg_weight)
    # A comparison already begun records every flag's value, used or not, and a restart or an
    # extension must repeat them (its configuration check says so): there a flag that no run of
    # this invocation uses is the recorded setting, not a slip.
    if not os.path.isfile(os.path.join(args.output_dir, CONFIG_FILE)):
        check_run_flags(args, specs, given)
    return specs


def inactive_regularizers(args: Any, specs: Sequence[RunSpec]) -> List[str]:
    """Warnings for the variants whose regulariser adds nothing to the loss (a weight of 0, or
    TSLoss with every term weighed 0) under a name that does not say so: they train as
    ``none``, and their results would read as that regulariser's. A sweep's ``tsloss_w0``
    names its weight (a control, as ``none`` is), and is not warned about."""
    out = []
    for variant, spec in {s.variant: s for s in specs}.items():
        run = apply_overrides(args, spec)
        if spec.regularizer == "none" or "reg_weight" in dict(spec.overrides):
            continue
        if run.reg_weight == 0:
            out.append(f"--reg-weight 0: {variant} trains without a regulariser, as none")
        elif spec.regularizer == "tsloss" and not (run.ts_connectivity or run.ts_redundancy
                                                   or run.ts_stability):
            out.append(f"--ts-connectivity, --ts-redundancy and --ts-stability are all 0: "
                       f"{variant} trains without a regulariser, as none")
    return out


def check_output_dir(out: str, single: bool, longest: str = "") -> None:
    """Refuse (a :class:`CLIError`) an ``--output-dir`` the training job cannot use: empty, not
    a folder, not writable, too long for ``longest`` (see :func:`_cli.check_writable`), or, for
    a ``single`` run, holding a comparison (see :func:`holds_comparison`)."""
    if not out:  # os.makedirs("") fails only once the model is loaded
        raise CLIError("--output-dir is empty: name a folder (. for the current one)")
    if os.path.exists(out) and not os.path.isdir(out):
        raise CLIError(f"--output-dir {out} exists and is not a folder")
    if launch_rank() == 0:  # the others' probes would race its removal
        check_writable(out, "--output-dir", longest)
    if single and holds_comparison(out):
        # A single run writes prompts/, metrics.csv and summary.json over the comparison's.
        raise CLIError(f"--output-dir {out} holds a --compare comparison, which a single run "
                       "would overwrite: use another --output-dir")


#: Job arguments that change no result of a run (or that the specs carry), left out of the
#: configuration a comparison folder must match.
NOT_CONFIG = ("output_dir", "quiet", "no_plots", "threads", "compare", "seeds", "seed",
              "regularizer", "checkpoint_every")


def comparison_config(args: Any, out_dir: str, ignore: Sequence[str] = ()) -> Dict[str, Any]:
    """The job's settings that a comparison folder records and must match on a restart:
    ``vars(args)`` without :data:`NOT_CONFIG` and ``ignore``, paths relative to ``out_dir``."""
    cfg = run_outputs.portable_config(args, out_dir)
    return {k: v for k, v in cfg.items() if k not in NOT_CONFIG and k not in ignore}


def apply_overrides(args: Any, spec: RunSpec) -> Any:
    """A shallow copy of an ``argparse.Namespace`` with the spec's overrides set."""
    out = copy.copy(args)
    for k, v in spec.overrides:
        if not hasattr(out, k):
            raise ValueError(f"override {k!r} of run {spec.run_id} is not a job argument")
        setattr(out, k, v)
    return out


def provenance(data: str, world: int) -> Dict[str, Any]:
    """What a run's result depends on beyond the configuration: the number of ranks (the
    effective batch is ``--batch-size`` × world), the data file's bytes and the code's version.
    A resumed comparison must match the record of every finished run it reuses."""
    from . import __version__
    h = hashlib.sha256()
    with open(data, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return {"world_size": int(world), "data_sha256": h.hexdigest(), "version": __version__}


def _run_files(out_dir: str) -> List[str]:
    runs = os.path.join(out_dir, "runs")
    return [f for f in os.listdir(runs) if f.endswith(".json")] if os.path.isdir(runs) else []


def holds_comparison(out_dir: str) -> bool:
    """Whether ``out_dir`` holds a ``--compare`` comparison: its config or finished runs (a
    ``runs/`` folder of other things, such as the default outputs' parent, does not count)."""
    return os.path.isfile(os.path.join(out_dir, CONFIG_FILE)) or bool(_run_files(out_dir))


# ---------------------------------------------------------------------------------------------
# files

def _write_json(path: str, obj: Any, allow_nan: bool = False) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=1, allow_nan=allow_nan)
            f.write("\n")
    atomic_write(path, write)


def _encode(v: Any) -> Any:
    """JSON-safe: arrays -> lists, infinities (H0's infinite bar) -> ``"inf"``."""
    if isinstance(v, np.ndarray):
        v = v.tolist()
    if isinstance(v, dict):
        return {k: _encode(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_encode(x) for x in v]
    if isinstance(v, float) and math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return v


def _decode_snapshots(snaps: Mapping[str, list]) -> Dict[str, List[np.ndarray]]:
    def arr(a: list) -> np.ndarray:
        x = np.array([[float(v) for v in row] for row in a], dtype=float)
        return x.reshape(-1, 2)
    return {k: [arr(h) for h in hs] for k, hs in snaps.items()}


def prompt_path(out_dir: str, run_id: str) -> str:
    return os.path.join(out_dir, "prompts", f"prompt_{run_id}.pt")


def save_run(out_dir: str, spec: RunSpec, result: Mapping[str, Any],
             prov: Optional[Mapping[str, Any]] = None) -> None:
    """Write one finished run (prompt first, so a ``runs/<id>.json`` always has its prompt),
    with its :func:`provenance` ``prov`` when given."""
    os.makedirs(os.path.join(out_dir, "runs"), exist_ok=True)
    os.makedirs(os.path.join(out_dir, "prompts"), exist_ok=True)
    atomic_write(prompt_path(out_dir, spec.run_id),
                 lambda tmp: torch.save(result["prompt"].detach().cpu().clone(), tmp))
    body = {k: _encode(v) for k, v in result.items() if k not in _NOT_IN_JSON}
    body.update(spec.to_json(), run_id=spec.run_id)
    if prov is not None:
        body[PROVENANCE] = dict(prov)
    # NaN stays NaN: a diverged run (train_one) is a result, read back by json as NaN.
    _write_json(os.path.join(out_dir, "runs", f"{spec.run_id}.json"), body, allow_nan=True)


def _of(kind: type) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, kind)


def nonempty_dicts(v: Any) -> bool:
    """A non-empty list of objects: a run's metric rows (step 0 at least)."""
    return isinstance(v, list) and len(v) > 0 and all(isinstance(r, dict) for r in v)


#: What a comparison's files must hold to be read back: key -> test of its value.
CONFIG_KEYS: Mapping[str, Callable[[Any], bool]] = {
    "config": _of(dict),
    "specs": lambda v: isinstance(v, dict) and all(isinstance(s, dict) for s in v.values())}
RUN_KEYS: Mapping[str, Callable[[Any], bool]] = {
    "run_id": _of(str), "regularizer": _of(str), "seed": _of(int), "variant": _of(str),
    "overrides": _of(dict), "rows": nonempty_dicts,
    "snapshots": lambda v: v is None or isinstance(v, dict),
    PROVENANCE: lambda v: v is None or isinstance(v, dict)}


def read_record(path: str, keys: Mapping[str, Callable[[Any], bool]],
                arg: str = "--output-dir") -> Dict[str, Any]:
    """The JSON object in ``path`` whose ``keys`` pass their tests (a missing key is None),
    else a :class:`CLIError` naming ``arg`` and the file: a resume or a report must not end in
    a traceback on a file that was cut short, damaged or written by hand."""
    try:
        with open(path) as f:
            body = json.load(f)
    except (OSError, UnicodeDecodeError, ValueError) as exc:  # JSONDecodeError is a ValueError
        raise CLIError(f"{arg}: cannot read {path}: {first_line(exc)}") from None
    bad = sorted(keys) if not isinstance(body, dict) else [
        k for k, valid in keys.items() if not valid(body.get(k))]
    if bad:
        raise CLIError(f"{arg}: {path} is not a file of a tsloss_cuda comparison (no valid "
                       f"{', '.join(bad)}): restore it, remove it or use another folder")
    return body


def load_run(out_dir: str, run_id: str) -> Optional[Dict[str, Any]]:
    """A finished run as :func:`save_run` wrote it (prompt tensor included), or None."""
    path = os.path.join(out_dir, "runs", f"{run_id}.json")
    if not (os.path.isfile(path) and os.path.isfile(prompt_path(out_dir, run_id))):
        return None
    res = read_record(path, RUN_KEYS)
    if res["run_id"] != run_id:
        raise CLIError(f"--output-dir: {path} holds run {res['run_id']!r}, not {run_id!r}: "
                       "restore it, remove it or use another folder")
    try:
        res["snapshots"] = _decode_snapshots(res.get("snapshots") or {})
    except (TypeError, ValueError) as exc:
        raise CLIError(f"--output-dir: {path} has snapshots that are not diagrams "
                       f"({first_line(exc)}): restore it, remove it or use another folder"
                       ) from None
    try:
        res["prompt"] = torch.load(prompt_path(out_dir, run_id), map_location="cpu")
    except Exception as exc:  # noqa: BLE001 - whatever a damaged file raises, named as such
        raise CLIError(f"--output-dir: cannot read {prompt_path(out_dir, run_id)}: "
                       f"{first_line(exc)}") from None
    return res


def _check_config(out_dir: str, config: Mapping[str, Any],
                  specs: Sequence[RunSpec]) -> Dict[str, Any]:
    """Refuse a folder made with another configuration; return the config file's new content
    (this configuration, every spec ever asked for, and this invocation's as ``last``)."""
    path = os.path.join(out_dir, CONFIG_FILE)
    config = json.loads(json.dumps(_encode(dict(config))))  # compare as it is stored
    known: Dict[str, Any] = {}
    if not os.path.isfile(path) and _run_files(out_dir):
        # Without the config its runs' settings are unknown: reusing them could mix settings.
        raise CLIError(f"--output-dir {out_dir} holds runs/ but no {CONFIG_FILE}, so the "
                       "settings of its runs are unknown: use another --output-dir (or restore "
                       f"its {CONFIG_FILE})")
    if os.path.isfile(path):
        old = read_record(path, CONFIG_KEYS)
        for k in sorted(set(old["config"]) | set(config)):
            if old["config"].get(k) != config.get(k):
                raise CLIError(
                    f"--output-dir {out_dir} holds a comparison with {k}={old['config'].get(k)!r}"
                    f", not {config.get(k)!r}: use another --output-dir or the same settings")
        known = old["specs"]
    for s in specs:
        if s.run_id in known and known[s.run_id] != s.to_json():
            raise CLIError(f"--output-dir {out_dir} holds run {s.run_id} with "
                           f"{known[s.run_id]['overrides']}, not {dict(s.overrides)}: use "
                           "another --output-dir or the same settings")
        known[s.run_id] = s.to_json()
    return {"config": config, "specs": known, "last": [s.run_id for s in specs]}


def _check_provenance(out_dir: str, run: Mapping[str, Any], prov: Mapping[str, Any]) -> None:
    """Refuse to reuse a finished run made by another world size, data file or version."""
    if run.get(PROVENANCE) is None:
        raise CLIError(f"--output-dir {out_dir} holds run {run['run_id']} recorded without its "
                       "world size, data file sha256 and version (an older tsloss_cuda), so "
                       "it may not match: use another --output-dir")
    mine = run[PROVENANCE]
    for k in sorted(prov):
        if mine.get(k) != prov[k]:
            raise CLIError(
                f"--output-dir {out_dir} holds run {run['run_id']} made with {k}="
                f"{mine.get(k)!r}, not {prov[k]!r}: use another --output-dir or the same "
                "world size, data file and tsloss_cuda version")


def run_comparison(out_dir: str, specs: Sequence[RunSpec], train_fn: Callable[[RunSpec], Dict],
                   config: Mapping[str, Any], *, quiet: bool = False, write: bool = True,
                   prov: Optional[Mapping[str, Any]] = None,
                   on_saved: Optional[Callable[[RunSpec], None]] = None) -> List[Dict[str, Any]]:
    """Train every spec not yet finished in ``out_dir``; return all results in spec order.

    Args:
        out_dir: the comparison folder (created).
        specs: the runs, e.g. from :func:`comparison_specs`.
        train_fn: trains one run: ``spec -> result dict`` with ``rows`` (list of metrics rows),
            ``prompt`` (``(N, D)`` tensor), ``snapshots`` (label -> ``[H0, H1]`` arrays) and
            JSON-able summary fields (``final_acc``, ``steps_to_target``, ...).
        config: JSON-able settings the results depend on (no paths of this machine); a folder
            made with other settings is refused with a :class:`CLIError`.
        quiet: no progress bar.
        write: False on the ranks other than 0 of a distributed job: they train the same
            missing runs (which runs are done is read before any rank can finish one, since
            training is collective) but write nothing, and return their own results.
        prov: :func:`provenance` of this job, recorded in each new run and checked against
            each finished one (a mismatch is a :class:`CLIError`); None records and checks
            nothing.
        on_saved: called with each spec once its run is recorded (``write``), e.g. to move the
            run's checkpoints into place: a restart skips a recorded run. Ctrl-C is held back
            from the record's writing till on_saved returns (:func:`deferred_sigint`).

    Returns:
        One result per spec, each with ``run_id``, ``variant``, ``overrides`` added; finished
        runs are loaded from disk, so a resumed comparison returns what an uninterrupted one
        would.
    """
    from tqdm.auto import tqdm
    ids = [s.run_id for s in specs]
    if len(set(ids)) != len(ids):
        raise ValueError(f"run ids repeat: {sorted(i for i in set(ids) if ids.count(i) > 1)}")
    if write:
        os.makedirs(out_dir, exist_ok=True)
    recorded = _check_config(out_dir, config, specs)
    done = {s.run_id: load_run(out_dir, s.run_id) for s in specs}
    if prov is not None:
        for run in done.values():
            if run is not None:
                _check_provenance(out_dir, run, prov)
    config_path = os.path.join(out_dir, CONFIG_FILE)
    fresh = write and not os.path.exists(config_path)
    if write:  # only once every check passed: a refused resume leaves the folder as it was
        for folder in (out_dir, os.path.join(out_dir, "runs"), os.path.join(out_dir, "prompts")):
            remove_leftovers(folder)  # a killed job's temporary records and prompts
        _write_json(config_path, recorded)
    todo = [s for s in specs if done[s.run_id] is None]
    bar = tqdm(total=len(specs), initial=len(specs) - len(todo), desc="comparison", unit="run",
               disable=quiet, dynamic_ncols=True)
    spent: List[float] = []
    try:
        for i, spec in enumerate(todo):
            if spent:  # time left from this process's own runs (loaded ones took unknown time)
                left = np.mean(spent) * (len(todo) - i)
                bar.set_postfix_str(f"{spec.run_id}, ~{_hms(left)} left")
            else:
                bar.set_postfix_str(spec.run_id)
            t0 = time.perf_counter()
            result = train_fn(spec)
            spent.append(time.perf_counter() - t0)
            if write:  # returned as read back, so a resumed comparison returns the same
                with deferred_sigint():  # the record and on_saved's checkpoints go in together
                    save_run(out_dir, spec, result, prov)
                    if on_saved is not None:
                        on_saved(spec)
                done[spec.run_id] = load_run(out_dir, spec.run_id)
            else:
                run = dict(result, **spec.to_json(), run_id=spec.run_id)
                if prov is not None:
                    run[PROVENANCE] = dict(prov)
                done[spec.run_id] = run
            if i == len(todo) - 1:
                bar.set_postfix_str("done", refresh=False)  # no time left to estimate
            bar.update(1)
    except BaseException:
        # A new comparison refused in its first run (an argument only a run checks) records
        # no settings: left behind, they refused the corrected command and any single run.
        if fresh and not any(done.values()):
            with contextlib.suppress(OSError):
                os.remove(config_path)
        raise
    finally:
        bar.close()
    runs = []
    for run_id in ids:
        run = done[run_id]
        assert run is not None  # loaded, or run above (and read back where written)
        runs.append(run)
    return runs


def _hms(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"
