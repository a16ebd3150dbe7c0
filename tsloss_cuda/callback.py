"""TSLoss for Hugging Face ``Trainer`` runs of PEFT prompt tuning, as a ``TrainerCallback``.

A callback cannot change the loss the Trainer back-propagates, but the gradient of
``task_loss + weight · TSLoss(prompt)`` is the task gradient plus ``weight · ∇TSLoss(prompt)``,
and TSLoss depends on the prompt alone. So :class:`TSLossCallback` adds that gradient in
``on_pre_optimizer_step``: after the backward passes (and gradient accumulation, and the
all-reduce of distributed training), just before ``optimizer.step()``. It works with any
Trainer and optimizer:

* gradient accumulation: the hook runs once per optimizer step, on the accumulated gradient,
  which the Trainer has already scaled to a mean; adding ``weight · ∇TSLoss`` once per step is
  the gradient of ``mean task loss + weight · TSLoss``. No 1/accumulation scaling is needed.
* distributed data parallel: every rank holds the same prompt, so every rank adds the same
  gradient and the prompts stay identical.
* gradient clipping (``max_grad_norm``) happens before the hook, so the TSLoss gradient itself is
  not clipped. With fp16 loss scaling, keep ``max_grad_norm > 0`` so that the gradients are
  unscaled before the hook.

At each logging step, ``on_log`` adds the prompt's topology summary (the columns of
``metrics.csv``: H0/H1 bar counts, lifetimes, entropies, the unweighted TSLoss terms, and
``ts_stability``, the stability distance to the prompt of the previous log) to the logs, under
``prefix``. Install the callback with :meth:`TSLossCallback.install` so it runs before the
Trainer's reporters (``report_to``) and they receive these keys; ``Trainer(callbacks=[...])``
puts it after them, and then only ``trainer.state.log_history`` and the console get them.
"""
from __future__ import annotations

from typing import Any, Dict, Optional

import torch
from transformers import TrainerCallback

from tsloss_cuda.loss import TSLoss
from tsloss_cuda.prompt_tuning import prompt_parameters
from tsloss_cuda.tracking import TopologyTracker, to_floats


class TSLossCallback(TrainerCallback):
    """Adds ``weight · TSLoss(prompt)`` to the training objective and logs prompt topology.

    Args:
        weight: the TSLoss weight (0: only log the topology).
        prefix: prepended to the logged keys, e.g. ``topology/ts_connectivity``.
        **options: TSLoss options (``connectivity``, ``redundancy``, ``stability``,
            ``normalize``, ...; see :func:`tsloss_cuda.loss`).

    The prompt is the PEFT prompt-tuning embedding (or a ``SoftPromptModel``'s prompt), ``(N,
    D)``, found with :func:`tsloss_cuda.prompt_tuning.prompt_parameters`. ``last_loss`` holds the
    unweighted TSLoss of the last optimizer step (a 0-d tensor, not synchronised until logged).
    """

    def __init__(self, weight: float = 0.1, *, prefix: str = "topology/", **options: Any) -> None:
        if not weight >= 0:
            raise ValueError(f"weight must be >= 0, got {weight}")
        self.weight = float(weight)
        self.prefix = prefix
        self.loss_fn = TSLoss(**options)
        self.last_loss: Optional[torch.Tensor] = None
        self._tracker = TopologyTracker(1, tsloss_terms=True)

    def install(self, trainer) -> "TSLossCallback":
        """Register as the trainer's first callback, ahead of its reporters; returns self."""
        trainer.callback_handler.callbacks.insert(0, self)
        return self

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        # No stability term (logged or trained) against another training run's prompt.
        self.loss_fn.reset()
        self._tracker = TopologyTracker(1, tsloss_terms=True)

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        if self.weight == 0:
            return
        prompt = prompt_parameters(model)
        with torch.enable_grad():
            value = self.loss_fn(prompt)
            (g,) = torch.autograd.grad(self.weight * value, prompt)
        if prompt.grad is None:
            prompt.grad = g.to(prompt.dtype)
        else:
            prompt.grad.add_(g.to(prompt.grad.dtype))
        self.last_loss = value.detach()

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
