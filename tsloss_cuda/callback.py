"""TSLoss for Hugging Face ``Trainer`` runs of PEFT prompt tuning, as a ``TrainerCallback``.

A callback cannot change the loss the Trainer back-propagates, but the gradient of
``task_loss + weight · TSLoss(prompt)`` is the task gradient plus ``weight · ∇TSLoss(prompt)``,
and TSLoss depends on the prompt alone. So :class:`TSLossCallback` adds that gradient in
``on_pre_optimizer_step``: after the backward passes (and gradient accumulation, and the
all-reduce of distributed training), just before ``optimizer.step()``. That hook exists only in
recent transformers releases (the constructor raises an ImportError on one without it). The
added gradient reaches the update through the prompt's ``.grad``: this works for optimizers that
read ``.grad`` in ``step()`` (torch's, and the usual ``optim`` choices; those that update
during the backward pass, LOMO and the layer-wise ones, are refused), in one process or with
data parallelism:

* gradient accumulation: the hook runs once per optimizer step, on the accumulated gradient,
  which the Trainer has already scaled to a mean; adding ``weight · ∇TSLoss`` once per step is
  the gradient of ``mean task loss + weight · TSLoss``. No 1/accumulation scaling is needed.
  Except where the Trainer sums the micro-batches' losses: a model whose ``forward`` takes
  ``**kwargs`` but whose loss ignores ``num_items_in_batch`` (transformers' sequence and token
  classifiers), whose task gradient is then G times its mean (G accumulation steps), so that
  TSLoss weighs G times less. ``on_train_begin`` warns of it; set
  ``trainer.model_accepts_loss_kwargs = False`` (the Trainer then divides by G).
* distributed data parallel: every rank holds the same prompt, so every rank adds the same
  gradient and the prompts stay identical.
* gradient clipping (``max_grad_norm``) happens before the hook, so the TSLoss gradient itself is
  not clipped, and the logged ``grad_norm`` leaves it out. With fp16 loss scaling the hook
  unscales the gradients first where the Trainer has not.
* DeepSpeed keeps gradients in its own buffers, not in ``.grad``, and FSDP shards the prompt
  across ranks: ``on_train_begin`` raises a RuntimeError for either, where the callback would
  silently not train (DeepSpeed) or see a shard of the prompt (FSDP).

At each logging step, ``on_log`` adds the prompt's topology summary (the columns of
``metrics.csv``: H0/H1 bar counts, lifetimes, entropies, the TSLoss terms computed with the
callback's options, unweighted, ``ts_scale`` and ``ts_stability``, the stability distance to the
prompt of the previous log) to the logs, under ``prefix``. Install the callback with
:meth:`TSLossCallback.install` so it runs before the Trainer's reporters (``report_to``) and
they receive these keys; ``Trainer(callbacks=[...])`` puts it after them, and then only
``trainer.state.log_history`` and the console get them.
"""
from __future__ import annotations

import inspect
import math
import numbers
import os
import warnings
import weakref
from typing import Any, Callable, Dict, Optional

import torch
from transformers import TrainerCallback

from tsloss_cuda.loss import TSLoss
from tsloss_cuda.prompt_tuning import prompt_parameters, stacked_prompts
from tsloss_cuda.tracking import TERM_OPTIONS, TopologyTracker, cpu_engine_refuses, to_floats


def _check_hook_exists() -> None:
    """Older Trainers never call ``on_pre_optimizer_step``: TSLoss would silently not train."""
    if not hasattr(TrainerCallback, "on_pre_optimizer_step"):
        import transformers
        raise ImportError("TSLossCallback needs a transformers release whose Trainer calls "
                          "TrainerCallback.on_pre_optimizer_step; installed: transformers "
                          f"{transformers.__version__}. Upgrade it: pip install -U transformers")


def _check_engine(args) -> None:
    """The TSLoss gradient goes into ``prompt.grad`` and the logs need the whole prompt: engines
    that keep gradients elsewhere or shard parameters would silently get neither right."""
    if getattr(args, "deepspeed", None) or getattr(args, "deepspeed_plugin", None) is not None:
        raise RuntimeError("TSLossCallback does not work under DeepSpeed: its engine keeps the "
                           "gradients in its own buffers, not in the prompt's .grad, so the "
                           "TSLoss gradient would never reach the optimizer")
    optim = str(getattr(getattr(args, "optim", None), "value", getattr(args, "optim", "")))
    if optim in ("lomo", "adalomo") or optim.endswith("_layerwise"):
        raise RuntimeError(f"TSLossCallback does not work with optim={optim!r}: it updates the "
                           "parameters during the backward pass, so the TSLoss gradient added "
                           "to the prompt's .grad before optimizer.step() would never be used")
    # `accelerate launch --use_fsdp` leaves args.fsdp empty; accelerate reads this instead.
    if getattr(args, "fsdp", None) or os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true":
        raise RuntimeError("TSLossCallback does not work under FSDP: each rank holds a shard of "
                           "the prompt, and TSLoss needs the whole (N, D) prompt")


def _check_model(model) -> None:
    """An encoder-decoder model's PEFT prompt is two prompts stacked (one per transformer
    submodule): one point cloud of both would mix them."""
    active, parts, _ = stacked_prompts(model)
    if parts != 1:
        raise RuntimeError(f"TSLossCallback takes one prompt: adapter {active!r} holds {parts} "
                           "prompts, one per transformer submodule (an encoder-decoder "
                           "model's), stacked into one embedding")


def _check_prompt_width(model, prompt: torch.Tensor) -> None:
    """PEFT sizes a prompt by ``config.hidden_size``, which is not the input embeddings' width
    where the model projects them (ALBERT, OPT-350m): the run then failed in PEFT's first
    forward (a torch.cat of the two), after the Trainer had set up."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    try:
        width = getattr(base.get_input_embeddings(), "embedding_dim", None)
    except (AttributeError, NotImplementedError):  # no table to compare with: PEFT finds one
        return
    if isinstance(width, int) and prompt.shape[-1] != width:
        raise ValueError(f"TSLossCallback: the soft prompt is {prompt.shape[-1]} wide but "
                         f"{type(base).__name__}'s input embeddings are {width} wide (PEFT "
                         "sizes it by config.hidden_size): pass "
                         f"PromptTuningConfig(token_dim={width})")


def _sums_accumulated_losses(args, model, trainer=None) -> bool:
    """Whether the Trainer adds the micro-batches' losses rather than their mean. It leaves the
    1/G to the loss when it counts the batch's items (``num_items_in_batch``, from a ``labels``
    key) for a model that takes loss kwargs, or for a ``compute_loss_func``; a model whose loss
    function takes no such count then sums. Decided as the Trainer decides: from ``trainer``'s
    own settings where :meth:`TSLossCallback.install` gave it (a user may have set them), else
    from the model's ``accepts_loss_kwargs`` or ``**kwargs`` as the Trainer's constructor does."""
    if getattr(args, "gradient_accumulation_steps", 1) <= 1:
        return False
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    from transformers.utils import find_labels
    labels = list(getattr(args, "label_names", None) or find_labels(type(base)))
    if "labels" not in labels:  # no item count: the Trainer divides by G itself
        return False
    if trainer is not None:
        if getattr(trainer, "loss_is_scaled_for_ga", None) is not None:
            return False  # the user's own word on it
        if getattr(trainer, "compute_loss_func", None) is not None:
            return False  # it is given the count
        accepts = bool(getattr(trainer, "model_accepts_loss_kwargs", False))
    elif hasattr(base, "accepts_loss_kwargs"):
        accepts = bool(base.accepts_loss_kwargs)
    else:
        accepts = any(p.kind == inspect.Parameter.VAR_KEYWORD
                      for p in inspect.signature(base.forward).parameters.values())
    loss_type = getattr(base, "loss_type", None)
    if not accepts or loss_type is None:  # no loss of transformers' to tell by
        return False
    from transformers.loss.loss_utils import LOSS_MAPPING
    loss_fn = LOSS_MAPPING.get(loss_type)
    if loss_fn is None:
        return False
    # mypy infers the mapping's values, functions of different signatures, as builtins.function,
    # which it does not take for a Callable.
    signature = inspect.signature(loss_fn)  # type: ignore[arg-type]
    return "num_items_in_batch" not in signature.parameters


def _unscale(optimizer) -> None:
    """With fp16 loss scaling the gradients must be unscaled before the TSLoss gradient joins
    them, or ``scaler.step`` divides it by the loss scale too (65536 at the start). Trainers
    unscale before the hook only where they clip (or, in recent releases, measure the norm); a
    second ``unscale_`` in one step raises, which means it was done."""
    scaler = getattr(optimizer, "scaler", None)  # accelerate's AcceleratedOptimizer
    inner = getattr(optimizer, "optimizer", None)
    if scaler is None or inner is None or not scaler.is_enabled():
        return
    try:
        scaler.unscale_(inner)
    except RuntimeError as e:
        if "already been called" not in str(e):
            raise


class TSLossCallback(TrainerCallback):
    """Adds ``weight · TSLoss(prompt)`` to the training objective and logs prompt topology.

    Args:
        weight: the TSLoss weight, finite and >= 0 (0: only log the topology and the
            ``ts_*`` terms; no loss is computed, so there is no ``tsloss`` key and
            ``last_loss`` stays None).
        prefix: prepended to the logged keys, e.g. ``topology/ts_connectivity``.
        **options: TSLoss options (``connectivity``, ``redundancy``, ``stability``,
            ``normalize``, ...; see :func:`tsloss_cuda.loss`). The logged ``ts_*`` terms use
            them too (:data:`tsloss_cuda.tracking.TERM_OPTIONS`), so they are the trained terms
            unweighted; ``ts_stability`` is measured between logs, not between steps.

    The prompt is the PEFT prompt-tuning embedding (or a ``SoftPromptModel``'s prompt), ``(N,
    D)``, found with :func:`tsloss_cuda.prompt_tuning.prompt_parameters`. ``last_loss`` holds
    TSLoss of the last optimizer step's prompt, before the factor ``weight`` (a 0-d tensor, not
    synchronised until logged).

    Each training log gains ``<prefix>`` + the topology metrics of the prompt at that step
    (:data:`tsloss_cuda.tracking.METRICS`), its ``ts_*`` terms, and (weight > 0) ``tsloss``:
    ``last_loss``, the trained loss of the last optimizer step, before ``weight`` and with the
    stability term against the previous step's prompt, so it need not equal the logged ``ts_*``
    terms, which describe the logged prompt and measure stability against the previous log.
    A diverged (NaN) prompt logs NaN, and the run goes on, on either device. The H1 metrics
    (:func:`tsloss_cuda.tracking.topology_metrics`) see at most the default capacity of bars
    (4·N, at least 8); the ``ts_*`` terms and the trained loss see ``max_h1`` where given.

    Every ``trainer.train()`` starts the stability term afresh, ``resume_from_checkpoint``
    included: a Trainer checkpoint does not hold the callback's previous diagram, so the first
    resumed step's stability term is 0, as a new run's.

    Raises:
        ImportError: the installed transformers has no ``on_pre_optimizer_step`` hook.
        TypeError: from the constructor: ``prefix`` is not a str, ``weight`` is not a real
            number, or an option is unknown or of the wrong type (checked as :class:`TSLoss`
            checks them).
        ValueError: from the constructor: ``weight`` is negative or not finite, or an
            option's value is invalid.
        RuntimeError: from ``on_train_begin``, under DeepSpeed or FSDP, with an optimizer that
            updates during the backward pass (``lomo``, ``adalomo``, ``*_layerwise``), or for a
            PEFT adapter of several stacked prompts (``num_transformer_submodules`` > 1).
        ValueError: from ``on_train_begin``, for a model without a soft prompt, or one whose
            width is not the input embeddings' (PEFT's ``token_dim`` defaults to
            ``config.hidden_size``, which ALBERT and OPT-350m project from).
    """

    def __init__(self, weight: float = 0.1, *, prefix: str = "topology/", **options: Any) -> None:
        _check_hook_exists()
        if isinstance(weight, bool) or not isinstance(weight, numbers.Real):
            raise TypeError(f"weight must be a real number, got {weight!r}")
        if not 0 <= weight < math.inf:  # NaN or inf would make every gradient NaN or inf
            raise ValueError(f"weight must be finite and >= 0, got {weight}")
        self.weight = float(weight)
        if not isinstance(prefix, str):
            raise TypeError(f"prefix must be a str (prepended to the logged keys), got {prefix!r}")
        self.prefix: str = prefix
        self.loss_fn: TSLoss = TSLoss(**options)
        self.last_loss: Optional[torch.Tensor] = None
        self._tracker: TopologyTracker = self._new_tracker()
        self._trainer: Optional[Callable[[], Any]] = None

    def __getstate__(self) -> Dict[str, Any]:
        state = dict(self.__dict__)
        state["_trainer"] = None  # a weak reference does not pickle; install() sets it again
        return state

    def _new_tracker(self) -> TopologyTracker:
        terms = {k: v for k, v in self.loss_fn.options.items() if k in TERM_OPTIONS}
        return TopologyTracker(1, tsloss_terms=True, term_options=terms)

    def install(self, trainer) -> "TSLossCallback":
        """Register as the trainer's first callback, ahead of its reporters; returns self.

        Registered once: a callback also passed as ``Trainer(callbacks=[...])`` moves to the front
        (twice registered, it added its gradient twice and logged a stability of 0)."""
        callbacks = trainer.callback_handler.callbacks
        callbacks[:] = [cb for cb in callbacks if cb is not self]
        callbacks.insert(0, self)
        self._trainer = weakref.ref(trainer)  # its loss settings, read at train begin
        return self

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        _check_engine(args)
        _check_model(model)
        # No soft prompt, or one of the wrong width: say so now, not after the first steps.
        _check_prompt_width(model, prompt_parameters(model))
        trainer = self._trainer() if self._trainer is not None else None
        if trainer is not None and not (trainer.model is model and any(
                cb is self for cb in trainer.callback_handler.callbacks)):
            trainer = None  # installed in another Trainer, now run by this one: not its settings
        if self.weight != 0 and _sums_accumulated_losses(args, model, trainer):
            g = args.gradient_accumulation_steps
            warnings.warn(
                f"TSLossCallback: with gradient_accumulation_steps={g}, the Trainer sums the "
                f"micro-batch losses of {type(model).__name__} (it leaves the 1/G to the "
                "model's loss, which ignores num_items_in_batch: transformers issue 37766), so "
                f"the task gradient is {g} times its mean and TSLoss weighs {g} times less than "
                f"weight={self.weight} says. Set trainer.model_accepts_loss_kwargs = False "
                "before trainer.train() (the Trainer then averages), unless a compute_loss_func "
                "of yours divides by num_items_in_batch", stacklevel=2)
        # No stability term (logged or trained) against another training run's prompt.
        self.loss_fn.reset()
        self._tracker = self._new_tracker()
        self.last_loss = None

    def on_pre_optimizer_step(self, args, state, control, model=None, optimizer=None, **kwargs):
        if self.weight == 0:
            return
        prompt = prompt_parameters(model)
        _unscale(optimizer)
        if prompt.device.type == "cpu" and cpu_engine_refuses(prompt):
            # Diverged (NaN, Inf, distances past the dtype's range): the CPU engine would raise;
            # CUDA gives NaN, and adding NaN to a NaN prompt's gradient changes nothing. Log NaN
            # on either device.
            self.last_loss = torch.full((), math.nan, dtype=prompt.dtype)
            return
        with torch.enable_grad():
            value = self.loss_fn(prompt)
            (g,) = torch.autograd.grad(self.weight * value, prompt)
        if prompt.grad is None:
            prompt.grad = g.to(prompt.dtype)
        else:
            prompt.grad.add_(g.to(prompt.grad.dtype))
        self.last_loss = value.detach().reshape(())  # reduction="none" gives (1,)

    def on_log(self, args, state, control, logs: Optional[Dict[str, float]] = None, model=None,
               **kwargs):
        if logs is None or model is None or "loss" not in logs:  # training logs only
            return
        self._tracker.update(state.global_step, prompt_parameters(model))
        summary = {self.prefix + k: v for k, v in self._tracker.flush()[0].items() if k != "step"}
        if self.last_loss is not None:
            summary[self.prefix + "tsloss"] = to_floats({"v": self.last_loss})["v"]
        logs.update(summary)
        # The Trainer copied ``logs`` into log_history before calling the callbacks.
        if state.log_history and state.log_history[-1].get("step") == state.global_step:
            state.log_history[-1].update(summary)
