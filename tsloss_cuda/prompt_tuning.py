"""Soft prompt tuning for Hugging Face transformers, and a prompt finder for PEFT models.

:class:`SoftPromptModel` prepends N learnable vectors (the soft prompt, ``(N, D)``) to the
token embeddings of a frozen model through ``inputs_embeds`` and extends the attention mask.

* causal LMs: the LM loss is taken on answer tokens only (labels ``-100`` elsewhere; the prompt
  positions are always ``-100``);
* encoders: a small trainable linear head classifies the masked mean of the last hidden states.

:func:`prompt_parameters` returns the prompt tensor of a :class:`SoftPromptModel` *or* of a PEFT
prompt-tuning model, so TSLoss is one line for either::

    loss = task_loss + 0.1 * tsloss_cuda.loss(prompt_parameters(model))
"""
from __future__ import annotations

from typing import Dict, Optional

import torch
from torch import nn

TASKS = ("causal", "encoder")
INITS = ("vocab", "random")


def detect_task(model: nn.Module) -> str:
    """``"causal"`` for a model with an LM head that generates, else ``"encoder"``."""
    cfg = getattr(model, "config", None)
    archs = list(getattr(cfg, "architectures", None) or []) + [type(model).__name__]
    if any(a.endswith("ForCausalLM") or a.endswith("LMHeadModel") for a in archs):
        return "causal"
    if hasattr(model, "get_output_embeddings") and model.get_output_embeddings() is not None \
            and not getattr(cfg, "is_encoder_decoder", False) \
            and getattr(cfg, "model_type", "") not in ("bert", "roberta", "distilbert"):
        return "causal"
    return "encoder"


class SoftPromptModel(nn.Module):
    """A frozen transformers model with a learnable soft prompt (and, for encoders, a head).

    Args:
        model: a transformers ``PreTrainedModel`` (causal LM, or a bare encoder such as
            ``BertModel``). Its parameters are frozen here.
        n_prompts: N, the number of prompt vectors.
        task: ``"causal"``, ``"encoder"`` or None (detected with :func:`detect_task`).
        num_labels: classes of the encoder head (ignored for causal LMs).
        init: ``"vocab"`` (copies of N randomly sampled vocabulary embeddings, as Lester et al.
            2021) or ``"random"`` (Gaussian with the vocabulary embeddings' per-dim std).
        generator: optional ``torch.Generator`` for the initialisation.
    """

    def __init__(self, model: nn.Module, n_prompts: int, *, task: Optional[str] = None,
                 num_labels: int = 2, init: str = "vocab",
                 generator: Optional[torch.Generator] = None) -> None:
        super().__init__()
        if n_prompts < 1:
            raise ValueError(f"n_prompts must be >= 1, got {n_prompts}")
        if init not in INITS:
            raise ValueError(f"init must be one of {INITS}, got {init!r}")
        task = detect_task(model) if task is None else task
        if task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {task!r}")
        self.model, self.task = model, task
        for p in model.parameters():
            p.requires_grad_(False)
        emb = model.get_input_embeddings().weight.detach()  # (V, D)
        v, d = emb.shape
        if init == "vocab":
            ids = torch.randint(0, v, (n_prompts,), generator=generator)
            start = emb[ids.to(emb.device)].float().clone()
        else:
            std = emb.float().std(0)
            start = torch.randn(n_prompts, d, generator=generator).to(emb.device) * std
        self.prompt = nn.Parameter(start)  # (N, D), float32 whatever the model's dtype
        self.head = nn.Linear(d, num_labels) if task == "encoder" else None
        if self.head is not None:
            self.head.to(emb.device)

    @property
    def n_prompts(self) -> int:
        return self.prompt.shape[0]

    def _embed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        """``(B, L)`` ids and mask -> ``(B, N+L, D)`` embeddings and ``(B, N+L)`` mask."""
        tok = self.model.get_input_embeddings()(input_ids)
        b = input_ids.shape[0]
        p = self.prompt.to(tok.dtype).unsqueeze(0).expand(b, -1, -1)
        mask = torch.cat([attention_mask.new_ones(b, self.n_prompts), attention_mask], 1)
        return torch.cat([p, tok], 1), mask

    def forward(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None,
                labels: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
        """Run the prompted model.

        Args:
            input_ids: ``(B, L)`` token ids.
            attention_mask: ``(B, L)`` (default all ones).
            labels: causal: ``(B, L)`` token ids with ``-100`` on non-answer tokens; encoder:
                ``(B,)`` class indices. Optional.

        Returns:
            dict with ``logits`` (causal ``(B, N+L, V)``, encoder ``(B, C)``) and, with labels,
            the scalar ``loss``.
        """
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        embeds, mask = self._embed(input_ids, attention_mask)
        out: Dict[str, torch.Tensor] = {}
        if self.task == "causal":
            full = None
            if labels is not None:
                full = torch.cat([labels.new_full((labels.shape[0], self.n_prompts), -100),
                                  labels], 1)
            res = self.model(inputs_embeds=embeds, attention_mask=mask, labels=full)
            out["logits"] = res.logits
            if labels is not None:
                out["loss"] = res.loss
            return out
        hidden = self.model(inputs_embeds=embeds, attention_mask=mask).last_hidden_state
        m = mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * m).sum(1) / m.sum(1).clamp_min(1.0)  # (B, D) masked mean
        logits = self.head(pooled.float())
        out["logits"] = logits
        if labels is not None:
            out["loss"] = nn.functional.cross_entropy(logits, labels)
        return out

    def trainable_parameters(self):
        """The prompt, plus the head for encoders."""
        params = [self.prompt]
        if self.head is not None:
            params += list(self.head.parameters())
        return params


def prompt_parameters(model: nn.Module) -> torch.Tensor:
    """The soft-prompt tensor ``(N, D)`` of a :class:`SoftPromptModel` or a PEFT model.

    For PEFT ``PromptTuningConfig`` models this is the active adapter's
    ``prompt_encoder[name].embedding.weight`` (``N = num_virtual_tokens ·
    num_transformer_submodules``). The returned tensor is the live parameter (not a copy), so
    a loss on it back-propagates into the prompt.
    """
    if isinstance(model, SoftPromptModel):
        return model.prompt
    inner = getattr(model, "module", None)  # DDP / DataParallel wrappers
    if isinstance(inner, nn.Module) and inner is not model:
        try:
            return prompt_parameters(inner)
        except ValueError:
            pass
    encoders = getattr(model, "prompt_encoder", None)
    if isinstance(encoders, nn.ModuleDict) and len(encoders) > 0:
        name = getattr(model, "active_adapter", None)
        if isinstance(name, (list, tuple)):
            name = name[0]
        enc = encoders[name] if name in encoders else next(iter(encoders.values()))
        emb = getattr(enc, "embedding", None)
        if isinstance(emb, nn.Embedding):
            return emb.weight
    raise ValueError(f"no soft prompt found in {type(model).__name__}: expected a "
                     "SoftPromptModel or a PEFT prompt-tuning model")
