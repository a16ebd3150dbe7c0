"""Pure soft prompt tuning of a frozen transformers model, and the same loss for PEFT models.

:class:`SoftPromptModel` prepends N learnable vectors (the soft prompt, ``(N, D)``) to the
token embeddings of a frozen model through ``inputs_embeds`` and extends the attention mask.
Both tasks take class labels ``(B,)`` and return class logits ``(B, C)``:

* causal LMs: classification as next-token prediction of label words (a verbalizer, ``C``
  token ids). Only the decoder body runs over the sequence; the output embedding is applied
  at the answer position alone and only to the ``C`` label rows of the LM head, so no
  full-vocabulary logits are ever formed. The loss is cross-entropy over the ``C`` label words
  (the label words' logits renormalised among themselves), the usual objective of verbalizer
  prompt tuning; it differs from the LM loss on the answer token only by the probability mass
  the LM puts on other words.
* encoders, ``head="similarity"`` (head-free): the masked-mean sentence embedding of the
  prompted input is scored against frozen embeddings of label descriptions by cosine
  similarity times a fixed temperature. The prompt is the only trainable tensor.
  ``head="linear"``: a trainable linear head instead.

:func:`peft_answer_logits` computes the same causal answer-position logits for a PEFT
prompt-tuning model, and :func:`prompt_parameters` finds the prompt tensor of either, so
TSLoss is one line for both::

    loss = task_loss + 0.1 * tsloss_cuda.loss(prompt_parameters(model))
"""
from __future__ import annotations

import numbers
import weakref
from typing import TYPE_CHECKING, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from .models import generates

if TYPE_CHECKING:  # peft is optional, and only typed here
    from peft import PeftModel

TASKS = ("causal", "encoder")
INITS = ("vocab", "random", "text")
HEADS = ("similarity", "linear")
#: Cosine similarities lie in [-1, 1]; scaled by 20 the label softmax can become confident.
TEMPERATURE = 20.0


def detect_task(model: nn.Module) -> str:
    """``"causal"`` for a model that generates text, else ``"encoder"`` (masked LMs and bare
    encoders included): as ``--task auto`` decides (:func:`tsloss_cuda.models.generates`), from
    the checkpoint's architectures or the model's own class. A ValueError for an
    encoder-decoder (T5, BART), whose decoder needs inputs of its own."""
    cfg = getattr(model, "config", None)
    if getattr(cfg, "is_encoder_decoder", False):
        raise ValueError(f"{type(model).__name__} is an encoder-decoder model; SoftPromptModel "
                         "tunes a decoder-only causal LM or an encoder")
    archs = list(getattr(cfg, "architectures", None) or []) + [type(model).__name__]
    if any(generates(a) for a in archs):
        return "causal"
    can_generate = getattr(model, "can_generate", None)  # a class transformers does not name
    return "causal" if callable(can_generate) and can_generate() else "encoder"


def text_init_ids(ids: Sequence[int], n: int) -> torch.Tensor:
    """``(n,)`` token ids of an init text, repeated or truncated to ``n`` (as PEFT's
    ``PromptTuningInit.TEXT``)."""
    if len(ids) == 0:
        raise ValueError("the init text has no tokens")
    reps = -(-n // len(ids))
    return torch.tensor(list(ids) * reps)[:n]


def _init_ids(init_ids) -> torch.Tensor:
    """``init_ids`` as a flat long tensor; a TypeError naming it for non-integer ids (a float
    would be truncated to another token)."""
    ids = torch.as_tensor(init_ids)
    if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
        raise TypeError(f"init_ids must be integer token ids, got {ids.dtype}")
    return ids.long().reshape(-1)


def _label_inputs(label_inputs, vocab: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """``label_inputs`` checked: a pair ``(ids, mask)`` of ``(C, Lc)`` tensors, ids in the
    vocabulary; a TypeError or ValueError naming it otherwise."""
    if (not isinstance(label_inputs, (tuple, list)) or len(label_inputs) != 2
            or not all(isinstance(t, torch.Tensor) for t in label_inputs)):
        raise TypeError("label_inputs must be a pair (ids, mask) of (C, Lc) tensors, got "
                        f"{type(label_inputs).__name__}")
    ids, mask = label_inputs
    if ids.dim() != 2 or ids.shape[0] < 1 or ids.shape[1] < 1 or mask.shape != ids.shape:
        raise ValueError("label_inputs must be (ids, mask) of one shape (C, Lc), C, Lc >= 1, "
                         f"got {tuple(ids.shape)} and {tuple(mask.shape)}")
    if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
        raise TypeError(f"label_inputs' ids must be integer token ids, got {ids.dtype}")
    bad = ids[(ids < 0) | (ids >= vocab)]
    if bad.numel():
        raise ValueError(f"label_inputs' ids must be token ids in [0, {vocab}) (the model's "
                         f"vocabulary), got {bad[0].item()}")
    return ids, mask


def _check_token_ids(ids: torch.Tensor, vocab: int, what: str) -> None:
    """Refuse ids outside the embedding table (its lookup would raise a bare IndexError)."""
    bad = ids[(ids < 0) | (ids >= vocab)]
    if bad.numel():
        raise ValueError(f"init_ids must be token ids in [0, {vocab}) (the model's vocabulary); "
                         f"{what} include {bad[0].item()}")


def _input_embeddings(model: nn.Module) -> nn.Embedding:
    """``model.get_input_embeddings()``: the token embedding of a transformers model, whose
    ``weight`` is the ``(V, D)`` table (nn.Module's type knows no such method)."""
    get: Callable[[], nn.Embedding] = getattr(model, "get_input_embeddings")
    return get()


def _output_embeddings(model: nn.Module) -> nn.Linear:
    """``model.get_output_embeddings()``: a causal LM's head, ``weight`` ``(V, D)`` and maybe a
    ``bias``."""
    get: Callable[[], nn.Linear] = getattr(model, "get_output_embeddings")
    return get()


def _decoder_body(lm: nn.Module) -> nn.Module:
    """The transformer under a causal LM's head (Llama/Gemma ``.model``, GPT-2 ``.transformer``)."""
    for name in ("model", "transformer"):
        body = getattr(lm, name, None)
        if isinstance(body, nn.Module):
            return body
    get = getattr(lm, "get_decoder", None)
    if get is not None and get() is not None:
        return get()
    raise ValueError(f"cannot find the decoder body of {type(lm).__name__}")


def answer_logits(lm: nn.Module, embeds: torch.Tensor, mask: torch.Tensor,
                  index: torch.Tensor, label_ids: torch.Tensor) -> torch.Tensor:
    """Label-word logits ``(B, C)`` of a causal LM at one position per row.

    Args:
        lm: a transformers causal LM.
        embeds: ``(B, T, D)`` input embeddings (prompt included), mask ``(B, T)``.
        index: ``(B,)`` the position whose next-token prediction is the answer.
        label_ids: ``(C,)`` the verbalizer's token ids.
    """
    # Positions count real tokens only: padding on either side leaves them as they would be
    # unpadded (on the right, which tasks.encode uses, they are plain arange, as PEFT's).
    pos = (mask.long().cumsum(1) - 1).clamp_min(0)
    hidden = _decoder_body(lm)(inputs_embeds=embeds, attention_mask=mask, position_ids=pos,
                               use_cache=False).last_hidden_state  # (B, T, D)
    h = hidden[torch.arange(hidden.shape[0], device=hidden.device), index]  # (B, D)
    head = _output_embeddings(lm)
    w = head.weight[label_ids]  # (C, D): C rows instead of the whole vocabulary
    logits = h @ w.t()
    bias = getattr(head, "bias", None)
    if bias is not None:
        logits = logits + bias[label_ids]
    cap = getattr(lm.config, "final_logit_softcapping", None)
    if cap:  # Gemma 2 squashes its logits; the argmax is unchanged, the loss is not
        logits = torch.tanh(logits / cap) * cap
    return logits.float()


_CHECKED: "weakref.WeakSet[nn.Module]" = weakref.WeakSet()


def check_answer_logits(lm: nn.Module, label_ids: torch.Tensor) -> None:
    """Raise ValueError if :func:`answer_logits` does not reproduce ``lm``'s own logits, or if
    ``lm`` is not left to right (a later token changes an earlier position's logits).

    Models transform the head's output in their ``forward`` in their own ways (Cohere
    multiplies by ``logit_scale``, Granite divides by ``logits_scaling``, another model
    multiplies by an attribute of that same name), and :func:`answer_logits` applies only
    Gemma's softcap. A model it does not match would train on a silently different loss, so
    the two are compared once per model, on one row of four label-word tokens, in eval mode,
    within 1 % of the largest logit (3 % in half precision): the transforms guarded against
    change logits by a factor, and TF32 matmuls may round at 1e-3.

    Args:
        lm: a transformers causal LM.
        label_ids: ``(C,)`` the verbalizer's token ids, on ``lm``'s device.
    """
    lm = getattr(lm, "_orig_mod", lm)  # torch.compile's wrapper: answer_logits runs the body
    if lm in _CHECKED:
        return
    label_ids = label_ids.to(_input_embeddings(lm).weight.device)
    ids = label_ids.repeat(4)[:4].unsqueeze(0)  # (1, 4) tokens the model surely has
    mask = torch.ones_like(ids)
    was_training = lm.training
    lm.eval()
    # The same row with its last token changed: a left-to-right model's first three positions
    # cannot see it.
    later = ids.clone()
    later[0, -1] = (ids[0, -1] + 1) % _input_embeddings(lm).weight.shape[0]
    try:
        with torch.no_grad():
            logits = lm(input_ids=ids, attention_mask=mask, use_cache=False).logits[0]
            own = logits[-1, label_ids].float()
            ours = answer_logits(lm, _input_embeddings(lm)(ids), mask,
                                 ids.new_tensor([3]), label_ids)[0]
            moved = lm(input_ids=later, attention_mask=mask, use_cache=False).logits[0]
    finally:
        lm.train(was_training)
    dtype = _input_embeddings(lm).weight.dtype
    rel = 1e-2 if dtype in (torch.float32, torch.float64) else 3e-2
    tol = rel * max(1.0, float(own.abs().max()))
    # A dense causal model's first positions do not move at all (0 in float32 and bfloat16
    # alike), a mixture of experts' by rounding (5e-7 of the changed position's change in a
    # tiny Mixtral; more where kernels or quantisation scales depend on all rows: hence the
    # floor of a few of the dtype's roundings); a random tiny BERT's moved 2e-3 to 7e-3 as much.
    change = (moved.float() - logits.float()).abs().amax(-1)  # (4,) per position
    eps = torch.finfo(dtype if dtype.is_floating_point else torch.float32).eps
    floor = 16 * eps * float(logits[:3].float().abs().max())
    if not float(change[:3].max()) <= max(1e-3 * float(change[3]), floor):
        # An encoder with an LM head (e.g. BERT loaded as BertLMHeadModel without is_decoder):
        # every position sees the whole row, so there is no next-token answer to score.
        raise ValueError(f"{type(lm).__name__} is not a causal (left-to-right) LM: its logits "
                         "at a position change with a later token, so it cannot score an answer "
                         "by next-token prediction; use task 'encoder' (--task encoder)")
    err = float((own - ours).abs().max())
    if not err <= tol:
        raise ValueError(f"{type(lm).__name__}'s own logits and answer_logits' differ (label-word "
                         f"logits {err:.3g} apart, on one row): its forward transforms its "
                         "logits (or its inputs) in a way answer_logits does not reproduce, so "
                         "this model is not supported for verbalizer prompt tuning")
    _CHECKED.add(lm)


def last_real_index(mask: torch.Tensor) -> torch.Tensor:
    """``(B,)`` index of each row's last unmasked position (either padding side)."""
    cols = torch.arange(mask.shape[1], device=mask.device)
    return (cols * mask.long()).argmax(1)


def answer_positions(answer_index, input_ids: torch.Tensor) -> torch.Tensor:
    """``answer_index`` as a ``(B,)`` long tensor on ``input_ids``' device, each in ``[0, L)``
    for ``(B, L)`` ids; a TypeError or ValueError naming it otherwise. Out-of-range values would
    index the prompt or a neighbouring row's position once shifted past the prompt. On the host
    the range is checked at once; on an accelerator asynchronously (a device assert), since a
    check there would synchronise every step."""
    b, length = input_ids.shape[0], input_ids.shape[1]
    idx = torch.as_tensor(answer_index, device=input_ids.device)
    if idx.is_floating_point() or idx.is_complex() or idx.dtype == torch.bool:
        raise TypeError(f"answer_index must hold integer positions, got {idx.dtype}")
    if idx.dim() == 0:
        idx = idx.expand(b)
    if tuple(idx.shape) != (b,):
        raise ValueError(f"answer_index must have shape ({b},) for input_ids of shape "
                         f"{tuple(input_ids.shape)}, got {tuple(idx.shape)}")
    idx = idx.long()
    inside = (idx >= 0) & (idx < length)
    if idx.device.type == "cpu":
        if not bool(inside.all()):
            bad = idx[~inside][0].item()
            raise ValueError(f"answer_index must be positions in input_ids, in [0, {length}), "
                             f"got {bad}")
    else:
        torch._assert_async(inside.all(), f"answer_index must be positions in [0, {length})")
    return idx


def _count(name: str, value) -> None:
    """A TypeError or ValueError naming the argument unless ``value`` is an int >= 1."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")


def _label_ids(label_ids, model: nn.Module) -> torch.Tensor:
    """``label_ids`` as a ``(C,)`` long tensor of ids in the model's vocabulary."""
    ids = torch.as_tensor(label_ids)
    if ids.dim() != 1 or ids.numel() < 1 or ids.is_floating_point() or ids.is_complex():
        raise ValueError("label_ids must be C >= 1 integer token ids, one per label, got "
                         f"{tuple(ids.shape)} {ids.dtype}")
    vocab = _input_embeddings(model).weight.shape[0]
    ids = ids.long()
    if ids.min() < 0 or ids.max() >= vocab:
        raise ValueError(f"label_ids must be token ids in [0, {vocab}), got {ids.tolist()}")
    return ids


class SoftPromptModel(nn.Module):
    """A frozen transformers model with a learnable soft prompt.

    Args:
        model: a transformers ``PreTrainedModel`` (causal LM, or a bare encoder such as
            ``BertModel``). Its parameters are frozen here.
        n_prompts: N, the number of prompt vectors.
        task: ``"causal"``, ``"encoder"`` or None (detected with :func:`detect_task`).
        label_ids: causal: ``(C,)`` verbalizer token ids (required).
        label_inputs: encoder with ``head="similarity"``: ``(ids, mask)`` ``(C, Lc)`` of the label
            descriptions, embedded once without the prompt.
        head: encoder: ``"linear"`` (the default: a trainable linear layer on the masked
            mean of the last hidden states) or ``"similarity"`` (head-free: the label
            descriptions' embeddings score the classes; the training job's default). Ignored
            for a causal LM.
        num_labels: classes of the linear head (default 2: set it to the task's).
        init: ``"vocab"`` (the embeddings of N token ids sampled uniformly, with replacement,
            from ``init_ids``, by default the whole vocabulary, special and unused tokens
            included; Lester et al. 2021 sample among the 5,000 most common tokens, which
            :func:`tsloss_cuda.tasks.frequent_tokens` approximates), ``"random"`` (Gaussian
            with the embeddings' per-dim std) or ``"text"`` (embeddings of ``init_ids``
            repeated/truncated to N).
        init_ids: ``"text"``: token ids of the init text; ``"vocab"``: the ids to sample from.
        generator: optional ``torch.Generator`` for the initialisation.

    The frozen model keeps its train/eval mode and follows ``.train()`` / ``.eval()``: in train
    mode its dropout is on, as in PEFT prompt tuning under a ``Trainer``; the training job runs
    it in eval mode (``models.load_model``). The label-description targets are always
    embedded in eval mode.
    """

    #: Buffers: causal, the verbalizer's ``(C,)`` token ids; encoder with ``head="similarity"``,
    #: the ``(C, D)`` normalised label-description embeddings.
    label_ids: torch.Tensor
    label_emb: torch.Tensor

    def __init__(self, model: nn.Module, n_prompts: int, *, task: Optional[str] = None,
                 label_ids: Optional[torch.Tensor] = None,
                 label_inputs: Optional[Tuple[torch.Tensor, torch.Tensor]] = None,
                 head: str = "linear", num_labels: int = 2, init: str = "vocab",
                 init_ids: Optional[Sequence[int]] = None,
                 generator: Optional[torch.Generator] = None) -> None:
        super().__init__()
        _count("n_prompts", n_prompts)
        if head == "linear":
            _count("num_labels", num_labels)
        if init not in INITS:
            raise ValueError(f"init must be one of {INITS}, got {init!r}")
        if head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, got {head!r}")
        task = detect_task(model) if task is None else task
        if task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {task!r}")
        self.model, self.task = model, task
        trainable = [p for p in model.parameters() if p.requires_grad]
        for p in trainable:
            p.requires_grad_(False)
        try:
            self.prompt = nn.Parameter(self._initial(n_prompts, init, init_ids, generator))
            self.head: Optional[nn.Linear] = None
            if task == "causal":
                if label_ids is None:
                    raise ValueError("a causal model needs label_ids (the verbalizer's token ids)")
                self.register_buffer("label_ids", _label_ids(label_ids, model), persistent=False)
                check_answer_logits(model, self.label_ids)
            elif head == "linear":
                # It reads the pooled hidden states, whose width is the embeddings' except where
                # the model projects them (ALBERT up to hidden_size, OPT-350m back down from it).
                self.head = nn.Linear(self._hidden_width(), num_labels).to(self.prompt.device)
            else:
                if label_inputs is None:
                    raise ValueError("head='similarity' needs label_inputs (label description ids "
                                     "and mask)")
                was_training = model.training
                model.eval()  # fixed targets: no dropout in them, whatever the model's mode
                vocab = _input_embeddings(model).weight.shape[0]
                try:
                    with torch.no_grad():
                        ids, mask = (t.to(self.prompt.device)
                                     for t in _label_inputs(label_inputs, vocab))
                        emb = _input_embeddings(model)(ids)
                        target = self._pool(emb, mask)
                finally:
                    model.train(was_training)
                self.register_buffer("label_emb", nn.functional.normalize(target, dim=-1),
                                     persistent=False)  # (C, D)
        except BaseException:  # a refused argument leaves the caller's model as it was
            for p in trainable:
                p.requires_grad_(True)
            raise

    def _initial(self, n: int, init: str, init_ids, generator) -> torch.Tensor:
        """``(N, D)`` float32 start; through the embedding module, which may scale (Gemma)."""
        embed = _input_embeddings(self.model)
        v = embed.weight.shape[0]
        dev = embed.weight.device
        with torch.no_grad():
            if init == "text":
                if init_ids is None:
                    raise ValueError("init='text' needs init_ids")
                ids = text_init_ids(_init_ids(init_ids).tolist(), n)
                _check_token_ids(ids, v, "the init text's token ids")
                return embed(ids.to(dev)).float().clone()
            if init == "vocab":
                if init_ids is None:
                    ids = torch.randint(0, v, (n,), generator=generator)
                else:
                    pool = _init_ids(init_ids)
                    if pool.numel() == 0:
                        raise ValueError("init_ids must be token ids to sample from, got none")
                    _check_token_ids(pool, v, "the token ids to sample from")
                    ids = pool[torch.randint(0, pool.numel(), (n,), generator=generator)]
                return embed(ids.to(dev)).float().clone()
            # The std over a sample of the vocabulary: the full table can be 100s of MB.
            sample = embed(torch.randperm(v, generator=generator)[:4096].to(dev)).float()
            std = sample.std(0)
            return torch.randn(n, std.shape[0], generator=generator).to(dev) * std

    def _hidden_width(self) -> int:
        """The width of the encoder's last hidden states, from its config: OPT's
        ``word_embed_proj_dim`` (OPT-350m projects them back down to the embeddings' width),
        else ``hidden_size`` (ALBERT and ELECTRA project the embeddings up to it), else the
        embeddings' width. Not a probe pass: one token broke Funnel (it pools the sequence by
        4) and switched BigBird to full attention for good."""
        cfg = getattr(self.model, "config", None)
        for key in ("word_embed_proj_dim", "hidden_size"):
            width = getattr(cfg, key, None)
            if isinstance(width, int) and width > 0:
                return width
        return self.prompt.shape[1]

    @property
    def n_prompts(self) -> int:
        return self.prompt.shape[0]

    def _embed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        """``(B, L)`` ids and mask -> ``(B, N+L, D)`` embeddings and ``(B, N+L)`` mask."""
        tok = _input_embeddings(self.model)(input_ids)
        b = input_ids.shape[0]
        p = self.prompt.to(tok.dtype).unsqueeze(0).expand(b, -1, -1)
        mask = torch.cat([attention_mask.new_ones(b, self.n_prompts), attention_mask], 1)
        return torch.cat([p, tok], 1), mask

    def _pool(self, embeds: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Masked mean ``(B, D)`` of the encoder's last hidden states, the prompt's positions
        included: sentence-transformers' mean pooling of the input the encoder sees. (Leaving
        them out would make the prompt act only through attention, as in a causal LM; the
        committed comparisons pooled them.)"""
        hidden = self.model(inputs_embeds=embeds, attention_mask=mask).last_hidden_state
        m = mask.unsqueeze(-1).to(hidden.dtype)
        return ((hidden * m).sum(1) / m.sum(1).clamp_min(1.0)).float()

    def forward(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None,
                labels: Optional[torch.Tensor] = None,
                answer_index: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
        """Run the prompted model.

        Args:
            input_ids: ``(B, L)`` token ids (causal: the text and cue, without the answer).
            attention_mask: ``(B, L)`` (default all ones).
            labels: ``(B,)`` class indices. Optional.
            answer_index: causal: ``(B,)`` position in ``input_ids`` whose next token is the
                answer (default: each row's last unmasked token).

        Returns:
            dict with ``logits`` ``(B, C)`` and, with labels, the scalar cross-entropy ``loss``.
        """
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        embeds, mask = self._embed(input_ids, attention_mask)
        if self.task == "causal":
            answer_index = (last_real_index(attention_mask) if answer_index is None else
                            answer_positions(answer_index, input_ids))
            logits = answer_logits(self.model, embeds, mask, answer_index + self.n_prompts,
                                   self.label_ids)
        elif self.head is not None:
            # In the head's dtype, which follows a cast of the whole module (.bfloat16()); the
            # logits in float32, as the causal ones.
            pooled = self._pool(embeds, mask)
            if pooled.shape[-1] != self.head.in_features:  # a config that misnames the width
                raise ValueError(f"head='linear' was sized {self.head.in_features} wide from "
                                 f"the model's config, but its hidden states are "
                                 f"{pooled.shape[-1]} wide: use head='similarity'")
            logits = self.head(pooled.to(self.head.weight.dtype)).float()
        else:
            pooled = nn.functional.normalize(self._pool(embeds, mask), dim=-1)
            logits = TEMPERATURE * pooled @ self.label_emb.float().t()
        out = {"logits": logits}
        if labels is not None:
            out["loss"] = nn.functional.cross_entropy(logits, labels)
        return out

    def trainable_parameters(self) -> List[nn.Parameter]:
        """The prompt, plus the linear head where there is one."""
        return [self.prompt] + (list(self.head.parameters()) if self.head is not None else [])


def peft_answer_logits(peft_model: PeftModel, input_ids: torch.Tensor,
                       attention_mask: torch.Tensor, label_ids: torch.Tensor,
                       answer_index: Optional[torch.Tensor] = None) -> torch.Tensor:
    """:func:`answer_logits` ``(B, C)`` for a PEFT prompt-tuning causal LM.

    PEFT puts its ``num_virtual_tokens`` prompt vectors before the token embeddings, as
    :class:`SoftPromptModel` does, so the answer position shifts by that many. The prompt
    comes from ``peft_model.get_prompt`` and the frozen base model runs without its
    full-vocabulary head; ``answer_index`` (default: last unmasked token) indexes ``input_ids``.
    The first call on a model runs :func:`check_answer_logits` on it.
    Positions count real tokens (as :func:`answer_logits`); PEFT's own forward numbers every
    column, pads included, so on left-padded rows the two differ: pad on the right (as
    :func:`tsloss_cuda.tasks.encode` does) for a prompt that PEFT then scores alike.
    """
    active = _active_encoder(peft_model)
    kind = _peft_type(peft_model, *active) if active is not None else "none"
    if kind not in _INPUT_PROMPT_TYPES:  # PEFT's own errors named neither the type nor why
        raise ValueError(f"peft_answer_logits takes a prompt put before the input embeddings "
                         f"(PEFT prompt tuning or P-tuning); {type(peft_model).__name__}'s "
                         f"PEFT type is {kind}")
    base = peft_model.get_base_model()
    tok = _input_embeddings(base)(input_ids)
    b = input_ids.shape[0]
    prompt = peft_model.get_prompt(batch_size=b).to(tok.dtype)  # (B, Nv, D)
    nv = prompt.shape[1]
    mask = torch.cat([attention_mask.new_ones(b, nv), attention_mask], 1)
    answer_index = (last_real_index(attention_mask) if answer_index is None else
                    answer_positions(answer_index, input_ids))
    label_ids = torch.as_tensor(label_ids, device=input_ids.device)
    check_answer_logits(base, label_ids)
    return answer_logits(base, torch.cat([prompt, tok], 1), mask, answer_index + nv, label_ids)


def _peft_type(model: nn.Module, name: str, encoder: nn.Module) -> str:
    """The PEFT type of adapter ``name`` (``"PROMPT_TUNING"``, ``"P_TUNING"``, ...): from its
    config, else from the encoder's class (``PromptEmbedding`` is prompt tuning's)."""
    configs = getattr(model, "peft_config", None)
    kind = getattr(configs.get(name), "peft_type", None) if isinstance(configs, dict) else None
    if kind is not None:
        return str(getattr(kind, "value", kind))  # PeftType is a str enum
    return "PROMPT_TUNING" if type(encoder).__name__ == "PromptEmbedding" else \
        type(encoder).__name__


#: PEFT types whose prompt is virtual tokens before the input embeddings (prefix tuning's are
#: key/value prefixes; multitask prompt tuning needs task ids).
_INPUT_PROMPT_TYPES = ("PROMPT_TUNING", "P_TUNING")


def _active_encoder(model: nn.Module) -> Optional[Tuple[str, nn.Module]]:
    """(name, prompt encoder) of a PEFT model's active adapter (the first of a list, else the
    first adapter), None without prompt encoders."""
    encoders = getattr(model, "prompt_encoder", None)
    if not isinstance(encoders, nn.ModuleDict) or len(encoders) == 0:
        return None
    name = getattr(model, "active_adapter", None)
    if isinstance(name, (list, tuple)):
        name = name[0]
    if not isinstance(name, str) or name not in encoders:  # None: no active adapter named
        name = next(iter(encoders.keys()))
    return name, encoders[name]


def stacked_prompts(model: nn.Module) -> Tuple[Optional[str], int, Optional[int]]:
    """(name, parts, num_virtual_tokens) of a PEFT model's active prompt adapter: ``parts`` is
    its ``num_transformer_submodules``, the prompts stacked in its one embedding (2 for an
    encoder-decoder model's), 1 where there is no such adapter or config."""
    active = _active_encoder(model)
    configs = getattr(model, "peft_config", None)
    if active is None or not isinstance(configs, dict) or active[0] not in configs:
        return None, 1, None
    config = configs[active[0]]
    return (active[0], getattr(config, "num_transformer_submodules", None) or 1,
            getattr(config, "num_virtual_tokens", None))


def _peft_prompt(model: nn.Module) -> Optional[torch.Tensor]:
    """The prompt of a PEFT prompt-tuning model, None if ``model`` has no prompt encoder.

    Other prompt-learning types also hold an ``embedding`` table, but it is not the prompt the
    model sees: P-tuning feeds it through an MLP/LSTM, prefix tuning makes key/value prefixes
    of it, multitask prompt tuning mixes it with task factors. TSLoss on it would regularise
    the wrong tensor, so they are refused.
    """
    active = _active_encoder(model)
    if active is None:
        return None
    name, enc = active
    kind = _peft_type(model, name, enc)
    emb = getattr(enc, "embedding", None)
    if kind != "PROMPT_TUNING" or not isinstance(emb, nn.Embedding):
        raise ValueError(f"no soft prompt found in {type(model).__name__}: its PEFT type is "
                         f"{kind}, and only PEFT prompt tuning (PeftType.PROMPT_TUNING) has "
                         "its soft prompt as a parameter")
    _, parts, nv = stacked_prompts(model)
    if parts != 1:  # one cloud of both would mix two prompts (and rows the model may not use)
        raise ValueError(f"the prompt of adapter {name!r} holds {parts} prompts stacked, one per "
                         "transformer submodule (an encoder-decoder model's); TSLoss takes one "
                         f"prompt: regularise each block of num_virtual_tokens = {nv} rows of "
                         f"prompt_encoder[{name!r}].embedding.weight on its own")
    return emb.weight


def prompt_parameters(model: nn.Module) -> torch.Tensor:
    """The soft-prompt tensor ``(N, D)`` of a :class:`SoftPromptModel` or a PEFT prompt-tuning
    model, also inside DDP, DataParallel and ``torch.compile`` wrappers.

    For PEFT ``PromptTuningConfig`` models this is the active adapter's
    ``prompt_encoder[name].embedding.weight`` (``N = num_virtual_tokens``). The returned tensor
    is the live parameter (not a copy), so a loss on it back-propagates into the prompt. Other
    PEFT types (P-tuning, prefix tuning, ...) raise a ValueError naming the type, and so does
    an encoder-decoder model's adapter, which stacks one prompt per transformer submodule.
    """
    if isinstance(model, SoftPromptModel):
        return model.prompt
    # DDP / DataParallel wrappers; torch.compile's (it forwards a PEFT model's prompt_encoder,
    # not the isinstance test above)
    inner = getattr(model, "module", None)
    if inner is None:
        inner = getattr(model, "_orig_mod", None)
    inner_error: Optional[ValueError] = None
    if isinstance(inner, nn.Module) and inner is not model:
        try:
            return prompt_parameters(inner)
        except ValueError as exc:
            inner_error = exc
    found = _peft_prompt(model)
    if found is not None:
        return found
    if inner_error is not None:  # it names the wrapped model, and its PEFT type if it has one
        raise inner_error
    raise ValueError(f"no soft prompt found in {type(model).__name__}: expected a "
                     "SoftPromptModel or a PEFT prompt-tuning model")
