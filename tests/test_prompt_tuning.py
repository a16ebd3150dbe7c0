"""Soft prompt wrapper, PEFT prompt finder, regularisers and topology tracking on tiny models."""
import math

import pytest
import torch

transformers = pytest.importorskip("transformers")

from tsloss_cuda.loss import TSLoss, loss as ts_loss  # noqa: E402
from tsloss_cuda.prompt_tuning import (TEMPERATURE, SoftPromptModel, detect_task,  # noqa: E402
                                       prompt_parameters)
from tsloss_cuda.tracking import METRICS, TopologyTracker, topology_metrics, to_floats  # noqa: E402
from tsloss_cuda.training import REGULARIZERS, make_regularizer  # noqa: E402


def tiny_bert():
    cfg = transformers.BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2,
                                  num_attention_heads=2, intermediate_size=64,
                                  max_position_embeddings=64)
    torch.manual_seed(0)
    return transformers.BertModel(cfg).eval()


def tiny_gpt2():
    cfg = transformers.GPT2Config(vocab_size=64, n_embd=32, n_layer=2, n_head=2, n_positions=64)
    torch.manual_seed(0)
    return transformers.GPT2LMHeadModel(cfg).eval()


class _Args:
    ts_connectivity, ts_redundancy, ts_stability = 1.0, 1.0, 0.1


def _encoder_batch():
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, 64, (12, 7), generator=g)
    mask = torch.ones_like(ids)
    mask[:4, 5:] = 0
    return ids, mask, torch.arange(12) % 3


@pytest.mark.parametrize("reg", REGULARIZERS)
def test_encoder_trains_with_each_regularizer(reg):
    spm = SoftPromptModel(tiny_bert(), 6, num_labels=3, generator=torch.Generator().manual_seed(0))
    assert spm.task == "encoder" and spm.prompt.shape == (6, 32)
    assert all(not p.requires_grad for p in spm.model.parameters())
    opt = torch.optim.Adam(spm.trainable_parameters(), lr=0.05)
    fn, ts_mod = make_regularizer(reg, _Args)
    tracker = TopologyTracker(every=5)
    ids, mask, y = _encoder_batch()
    losses, rows = [], []
    for step in range(1, 21):
        opt.zero_grad()
        task = spm(ids, mask, labels=y)["loss"]
        (task + 0.1 * fn(spm.prompt)).backward()
        opt.step()
        losses.append(task.detach())
        if tracker.due(step):
            terms = ts_mod.last_terms if ts_mod is not None else ts_loss(
                spm.prompt.detach(), return_terms=True)[1]
            tracker.update(step, spm.prompt, terms)
    rows = tracker.flush()
    assert float(losses[-1]) < float(losses[0])
    assert [r["step"] for r in rows] == [5, 10, 15, 20]
    for r in rows:
        for k in METRICS + ("ts_connectivity", "ts_redundancy", "ts_stability", "ts_scale"):
            assert k in r and math.isfinite(r[k])
    if reg == "tsloss":
        assert rows[-1]["ts_stability"] > 0  # stateful: compared with the previous step


def test_regularizer_values_are_their_documented_definitions():
    """l2: the mean over prompt vectors of the squared norm; pairwise: the mean distance over
    the N(N-1) ordered pairs of distinct vectors. Computed here without the package."""
    g = torch.Generator().manual_seed(3)
    p = torch.randn(5, 4, generator=g)
    l2, none_mod = make_regularizer("l2", _Args)
    assert none_mod is None
    want = torch.stack([v.dot(v) for v in p]).mean()
    assert float(l2(p)) == pytest.approx(float(want), rel=1e-6)
    pairwise, _ = make_regularizer("pairwise", _Args)
    dist = torch.cdist(p.double(), p.double())
    off = dist[~torch.eye(5, dtype=torch.bool)]
    assert off.numel() == 20 and float(pairwise(p)) == pytest.approx(float(off.mean()), rel=1e-6)
    assert float(pairwise(p[:1])) == 0.0  # one vector: no pair, no division by zero
    none, _ = make_regularizer("none", _Args)
    assert float(none(p)) == 0.0


class _DistinctWeights:
    ts_connectivity, ts_redundancy, ts_stability = 0.3, 1.7, 0.6


def _hexagon_prompts():
    """A noisy hexagon (one H1 bar, so the redundancy term is not 0), then the same with one
    vector pushed out (its diagram moves, so the stability term is not 0 either)."""
    g = torch.Generator().manual_seed(0)
    a = torch.arange(6) * (math.pi / 3)
    p = torch.zeros(6, 8)
    p[:, 0], p[:, 1] = a.cos(), a.sin()
    p += 0.05 * torch.randn(6, 8, generator=g)
    q = p.clone()
    q[0] *= 1.5
    return p, q


def test_tsloss_regularizer_applies_the_ts_weights():
    """make_regularizer("tsloss") as train_one calls it: its values are tsloss_cuda.loss with
    --ts-connectivity/--ts-redundancy/--ts-stability as the weights (the job's other options
    are the defaults), the second call's stability measured against the first's topology."""
    p, q = _hexagon_prompts()
    fn, mod = make_regularizer("tsloss", _DistinctWeights)
    assert fn is mod
    w = dict(connectivity=0.3, redundancy=1.7, stability=0.6)
    _, t_p = ts_loss(p, return_terms=True, **w)
    want_q, t_q = ts_loss(q, previous=t_p["topology"], return_terms=True, **w)
    # Every term counts, and differently: weights dropped or swapped move the value.
    assert int(t_q["h1_count"]) == 1
    terms = [float(t_q[k]) for k in ("connectivity", "redundancy", "stability")]
    assert min(terms) > 0.02 and abs(terms[0] - terms[1]) > 0.3, terms
    torch.testing.assert_close(fn(p), ts_loss(p, **w), rtol=0, atol=0)  # no previous yet
    torch.testing.assert_close(fn(q), want_q, rtol=0, atol=0)
    assert float(mod.last_terms["stability"]) == terms[2]


def test_ts_flags_reach_the_tsloss_regularizer():
    """The job's own parser: each --ts-* flag lands on its TSLoss weight; unset, the documented
    defaults (1, 1, 0). No other TSLoss option is set by the job."""
    from tsloss_cuda.compare import job_specs
    from tsloss_cuda.train import build_parser
    flags = ["--ts-connectivity", "0.3", "--ts-redundancy", "1.7", "--ts-stability", "0.6"]
    for argv, want in [(flags, TSLoss(connectivity=0.3, redundancy=1.7, stability=0.6)),
                       ([], TSLoss(connectivity=1.0, redundancy=1.0, stability=0.0))]:
        args = build_parser().parse_args(argv)
        job_specs(args)  # as train.run: refuses unused flags, sets the defaults
        _, mod = make_regularizer("tsloss", args)
        assert mod.options == want.options, argv


def test_answer_logits_add_the_heads_bias():
    """An LM head with a bias (as some checkpoints have): the label-word logits are the model's
    own, bias included (the bias rows of the label words only)."""
    from tsloss_cuda.prompt_tuning import answer_logits
    torch.manual_seed(0)
    lm = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=64)).eval()
    lm.lm_head = torch.nn.Linear(32, 64, bias=True)
    torch.nn.init.normal_(lm.lm_head.bias, std=3.0)
    embeds, mask = torch.randn(2, 5, 32), torch.ones(2, 5, dtype=torch.long)
    index, labels = torch.tensor([4, 2]), torch.tensor([7, 11, 3])
    with torch.no_grad():
        own = lm(inputs_embeds=embeds, attention_mask=mask).logits
        own = own[torch.arange(2), index][:, labels]
        got = answer_logits(lm, embeds, mask, index, labels)
    torch.testing.assert_close(got, own, rtol=1e-5, atol=1e-5)


def test_encoder_width_prefers_the_projected_width():
    """OPT-350m projects its hidden states down to word_embed_proj_dim: that, not hidden_size,
    is the width a linear head reads."""
    import types
    model = types.SimpleNamespace(config=types.SimpleNamespace(word_embed_proj_dim=16,
                                                               hidden_size=32))
    fake = types.SimpleNamespace(model=model, prompt=torch.zeros(4, 8))
    assert SoftPromptModel._hidden_width(fake) == 16
    model.config = types.SimpleNamespace(hidden_size=32)
    assert SoftPromptModel._hidden_width(fake) == 32
    model.config = None
    assert SoftPromptModel._hidden_width(fake) == 8


def test_detect_task_tells_generating_lms_from_encoders():
    small = dict(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                 intermediate_size=64)
    causal = [transformers.LlamaForCausalLM(transformers.LlamaConfig(**small)), tiny_gpt2()]
    encoders = [transformers.BertModel(transformers.BertConfig(**small)),
                transformers.XLMRobertaForMaskedLM(transformers.XLMRobertaConfig(**small)),
                transformers.AlbertForMaskedLM(transformers.AlbertConfig(embedding_size=16,
                                                                         **small))]
    assert [detect_task(m) for m in causal] == ["causal"] * 2
    # Masked LMs have an output embedding too, but they do not generate.
    assert [detect_task(m) for m in encoders] == ["encoder"] * 3
    # An encoder-decoder was an encoder, whose forward then asked for decoder inputs.
    t5 = transformers.T5ForConditionalGeneration(transformers.T5Config(
        vocab_size=64, d_model=32, d_kv=8, d_ff=64, num_layers=1, num_heads=2))
    with pytest.raises(ValueError, match="T5ForConditionalGeneration is an encoder-decoder"):
        detect_task(t5)


def test_causal_lm_classifies_by_label_words():
    model = tiny_gpt2()
    assert detect_task(model) == "causal"
    labels = torch.tensor([3, 7, 11])
    spm = SoftPromptModel(model, 4, label_ids=labels, init="random",
                          generator=torch.Generator().manual_seed(0))
    ids = torch.randint(1, 64, (6, 8), generator=torch.Generator().manual_seed(2))
    y = torch.arange(6) % 3
    out = spm(ids, labels=y)
    assert out["logits"].shape == (6, 3)
    # Reference: the model's own logits on the same embeddings, last position, label columns.
    emb = torch.cat([spm.prompt.expand(6, -1, -1), model.get_input_embeddings()(ids)], 1)
    ref = model(inputs_embeds=emb).logits[:, -1][:, labels]
    torch.testing.assert_close(out["loss"], torch.nn.functional.cross_entropy(ref, y))
    opt = torch.optim.Adam(spm.trainable_parameters(), lr=0.05)
    # The task loss alone, before and after, training with the regulariser added. One label for
    # every row: a prompt shared by all rows can favour a label, but in this tiny random model it
    # cannot separate examples (balanced labels moved the loss by 6e-4). Measured: 1.145 -> 1.099.
    target = torch.ones(6, dtype=torch.long)
    first = float(spm(ids, labels=target)["loss"].detach())
    for _ in range(15):
        opt.zero_grad()
        loss = spm(ids, labels=target)["loss"] + 0.1 * ts_loss(prompt_parameters(spm))
        loss.backward()
        opt.step()
    assert float(spm(ids, labels=target)["loss"].detach()) < first - 0.03
    with pytest.raises(ValueError, match="label_ids"):
        SoftPromptModel(model, 4)


def test_answer_index_is_checked_and_scores_the_position_it_names():
    """answer_index counts positions of input_ids: one outside [0, L) once scored the prompt's
    last vector (-1) or failed with the prompt-shifted index in torch's message."""
    model = tiny_gpt2()
    spm = SoftPromptModel(model, 4, label_ids=torch.tensor([3, 7, 11]), init="random",
                          generator=torch.Generator().manual_seed(0))
    ids = torch.randint(1, 64, (2, 6), generator=torch.Generator().manual_seed(2))
    at = spm(ids, answer_index=torch.tensor([2, 5]))["logits"]
    emb = torch.cat([spm.prompt.expand(2, -1, -1), model.get_input_embeddings()(ids)], 1)
    full = model(inputs_embeds=emb).logits[:, :, [3, 7, 11]]
    torch.testing.assert_close(at, torch.stack([full[0, 4 + 2], full[1, 4 + 5]]))
    torch.testing.assert_close(spm(ids, answer_index=3)["logits"], full[:, 4 + 3])
    for bad, exc, text in ((torch.tensor([-1, 2]), ValueError, r"in \[0, 6\), got -1"),
                           (torch.tensor([6, 0]), ValueError, r"in \[0, 6\), got 6"),
                           (torch.tensor([1, 2, 3]), ValueError, r"shape \(2,\)"),
                           (torch.tensor([1.0, 2.0]), TypeError, "integer positions")):
        with pytest.raises(exc, match="answer_index " if exc is TypeError else text):
            spm(ids, answer_index=bad)


@pytest.mark.parametrize("kwargs", [
    dict(head="similarity", label_inputs=(torch.tensor([[1, 500]]), torch.ones(1, 2))),
    dict(init="text", init_ids=[1.5]),
    dict(task="causal")])  # no label_ids
def test_a_refused_model_is_left_as_it_was(kwargs):
    """The model was frozen before the arguments were checked, and put in eval mode for the
    label embeddings with no way back on an error: a refused call left the caller's model
    without gradients and without dropout."""
    model = tiny_bert().train()
    frozen = model.embeddings.word_embeddings.weight
    frozen.requires_grad_(False)  # the caller's own choice stays too
    with pytest.raises((ValueError, TypeError)):
        SoftPromptModel(model, 4, **kwargs)
    assert model.training
    assert all(p.requires_grad for p in model.parameters() if p is not frozen)
    assert not frozen.requires_grad


def test_init_ids_and_label_inputs_are_checked():
    """A float id was truncated to another token; label inputs of the wrong form failed in
    torch with messages that named no argument."""
    with pytest.raises(TypeError, match="init_ids must be integer token ids"):
        SoftPromptModel(tiny_bert(), 4, init="vocab", init_ids=[1.5, 2.7])
    with pytest.raises(TypeError, match="init_ids must be integer token ids"):
        SoftPromptModel(tiny_bert(), 4, init="text", init_ids=[1.5, 2.7])
    desc = torch.randint(1, 64, (3, 4), generator=torch.Generator().manual_seed(6))
    for bad, exc, text in ((desc, TypeError, "pair"),
                           ((desc, torch.ones(3, 5)), ValueError, "one shape"),
                           ((desc + 100, torch.ones_like(desc)), ValueError, r"\[0, 64\)"),
                           ((desc.float(), torch.ones_like(desc)), TypeError, "integer")):
        with pytest.raises(exc, match="label_inputs.*" + text):
            SoftPromptModel(tiny_bert(), 4, head="similarity", label_inputs=bad)


def test_encoder_head_free_scores_label_descriptions():
    model = tiny_bert()
    desc = torch.randint(1, 64, (3, 4), generator=torch.Generator().manual_seed(6))
    spm = SoftPromptModel(model, 6, head="similarity", label_inputs=(desc, torch.ones_like(desc)),
                          generator=torch.Generator().manual_seed(0))
    assert spm.head is None and spm.trainable_parameters() == [spm.prompt]
    ids, mask, y = _encoder_batch()
    out = spm(ids, mask, labels=y)
    # Reference: cosine similarity of masked-mean embeddings, times the fixed temperature.
    def pooled(i, m):
        h = model(input_ids=i, attention_mask=m).last_hidden_state
        return (h * m[..., None]).sum(1) / m.sum(1, keepdim=True)
    label_emb = pooled(desc, torch.ones_like(desc))
    emb = torch.cat([spm.prompt.expand(12, -1, -1), model.get_input_embeddings()(ids)], 1)
    full_mask = torch.cat([torch.ones(12, 6, dtype=mask.dtype), mask], 1)
    h = model(inputs_embeds=emb, attention_mask=full_mask).last_hidden_state
    p = (h * full_mask[..., None]).sum(1) / full_mask.sum(1, keepdim=True)
    ref = TEMPERATURE * torch.nn.functional.cosine_similarity(p[:, None], label_emb[None], dim=-1)
    torch.testing.assert_close(out["logits"], ref, rtol=1e-4, atol=1e-4)
    opt = torch.optim.Adam(spm.trainable_parameters(), lr=0.05)
    for _ in range(15):
        opt.zero_grad()
        loss = spm(ids, mask, labels=y)["loss"]
        loss.backward()
        opt.step()
    assert all(p.grad is None for p in model.parameters())
    assert float(spm(ids, mask, labels=y)["loss"].detach()) < float(out["loss"].detach())


def test_vocab_init_copies_embeddings():
    model = tiny_bert()
    spm = SoftPromptModel(model, 5, generator=torch.Generator().manual_seed(3))
    emb = model.get_input_embeddings().weight
    same = (spm.prompt.detach()[:, None, :] == emb.detach()[None]).all(-1)  # (N, V)
    assert bool(same.any(1).all())
    with pytest.raises(ValueError):
        SoftPromptModel(model, 0)


def test_vocab_init_draws_from_the_whole_pool_by_the_generator():
    """init="vocab" with init_ids (--init frequent's tokens): N ids drawn uniformly from the
    pool by the generator, so each seed starts from its own prompt."""
    model = tiny_bert()
    emb = model.get_input_embeddings().weight.detach()
    pool = list(range(10, 30))

    def drawn(seed):
        spm = SoftPromptModel(model, 8, init="vocab", init_ids=pool,
                              generator=torch.Generator().manual_seed(seed))
        return (spm.prompt.detach()[:, None] == emb[None]).all(-1).int().argmax(1).tolist()

    draws = [drawn(seed) for seed in range(4)]
    assert drawn(0) == draws[0] and len({tuple(d) for d in draws}) == 4
    ids = set().union(*draws)
    assert ids <= set(pool) and ids - set(pool[:8])  # not only the pool's first N


def test_random_init_is_gaussian_with_the_embeddings_per_dimension_std():
    """init="random": independent of the vocabulary rows, each dimension's spread that of the
    embedding table's (here scaled up per dimension, so a plain N(0, 1) would not match)."""
    model = tiny_bert()
    scale = torch.linspace(0.1, 3.0, 32)
    with torch.no_grad():
        model.get_input_embeddings().weight.mul_(scale / model.get_input_embeddings().weight.std(0))
    spm = SoftPromptModel(model, 4000, init="random", generator=torch.Generator().manual_seed(3))
    prompt = spm.prompt.detach()
    emb = model.get_input_embeddings().weight.detach()
    assert not (prompt[:, None, :] == emb[None]).all(-1).any()
    torch.testing.assert_close(prompt.std(0), emb.std(0), rtol=0.06, atol=0)
    assert prompt.mean(0).abs().max() < 0.1 * scale.max()


def test_peft_prompt_tuning_one_line_tsloss():
    peft = pytest.importorskip("peft")
    cfg = peft.PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=5)
    pm = peft.get_peft_model(tiny_gpt2(), cfg)
    prompt = prompt_parameters(pm)
    assert prompt.shape == (5, 32) and prompt.requires_grad
    ids = torch.randint(1, 64, (3, 6), generator=torch.Generator().manual_seed(4))
    before = prompt.detach().clone()
    opt = torch.optim.Adam([p for p in pm.parameters() if p.requires_grad], lr=0.01)
    loss = pm(input_ids=ids, labels=ids).loss + 0.1 * ts_loss(prompt_parameters(pm))
    loss.backward()
    assert prompt.grad is not None and prompt.grad.abs().sum() > 0
    opt.step()
    assert not torch.equal(before, prompt_parameters(pm).detach())
    with pytest.raises(ValueError):
        prompt_parameters(torch.nn.Linear(2, 2))


def test_a_list_of_active_adapters_gives_the_first_ones_prompt():
    """Several active adapters: the first one's prompt (as transformers' active_adapter())."""
    peft = pytest.importorskip("peft")
    pm = peft.get_peft_model(tiny_gpt2(), peft.PromptTuningConfig(task_type="CAUSAL_LM",
                                                                  num_virtual_tokens=5))
    pm.add_adapter("other", peft.PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=3))
    pm.active_adapter = ["other", "default"]
    prompt = prompt_parameters(pm)
    assert prompt.shape == (3, 32) and prompt is pm.prompt_encoder["other"].embedding.weight


@pytest.mark.parametrize("kind", ["P_TUNING", "PREFIX_TUNING"])
def test_other_peft_types_have_no_soft_prompt(kind):
    """P-tuning's embedding table goes through an MLP/LSTM and prefix tuning's becomes key/value
    prefixes: neither is the prompt the model sees, so TSLoss must not be put on it."""
    peft = pytest.importorskip("peft")
    cfg = (peft.PromptEncoderConfig(task_type="CAUSAL_LM", num_virtual_tokens=5,
                                    encoder_hidden_size=16) if kind == "P_TUNING"
           else peft.PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=5))
    pm = peft.get_peft_model(tiny_gpt2(), cfg)
    with pytest.raises(ValueError, match=f"no soft prompt found.*PEFT type is {kind}"):
        prompt_parameters(pm)


def test_an_encoder_decoder_prompt_is_refused_as_one_cloud():
    """PEFT stacks one prompt per transformer submodule (an encoder-decoder's two): TSLoss on
    both as one (2N, D) cloud moved rows the model never used and mixed the two."""
    peft = pytest.importorskip("peft")
    t5 = transformers.T5ForConditionalGeneration(transformers.T5Config(
        vocab_size=64, d_model=32, d_kv=8, d_ff=64, num_layers=1, num_heads=2,
        decoder_start_token_id=0))
    pm = peft.get_peft_model(t5, peft.PromptTuningConfig(task_type="SEQ_2_SEQ_LM",
                                                         num_virtual_tokens=4))
    with pytest.raises(ValueError, match="holds 2 prompts stacked.*num_virtual_tokens = 4"):
        prompt_parameters(pm)


@pytest.mark.parametrize("kind", ["PREFIX_TUNING", "LORA"])
def test_peft_answer_logits_names_a_type_without_an_input_prompt(kind):
    """Prefix tuning's prompt is key/value prefixes and LoRA has none: PEFT failed inside with
    'DynamicCache' object has no attribute 'to' or a missing prompt_encoder."""
    peft = pytest.importorskip("peft")
    from tsloss_cuda.prompt_tuning import peft_answer_logits
    cfg = (peft.PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=5)
           if kind == "PREFIX_TUNING" else
           peft.LoraConfig(task_type="CAUSAL_LM", r=2, target_modules=["c_attn"]))
    pm = peft.get_peft_model(tiny_gpt2(), cfg)
    ids = torch.randint(1, 64, (2, 6), generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="PEFT type is " + ("PREFIX_TUNING" if kind ==
                                                              "PREFIX_TUNING" else "none")):
        peft_answer_logits(pm, ids, torch.ones_like(ids), torch.tensor([3, 7]))


def test_topology_metrics_of_a_square():
    sq = torch.tensor([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    m = to_floats(topology_metrics(sq))
    assert m["h0_count"] == 3 and m["h1_count"] == 1
    assert m["h0_max_life"] == pytest.approx(1.0) and m["h0_total"] == pytest.approx(3.0)
    assert m["h0_entropy"] == pytest.approx(math.log(3))
    assert m["h1_max_life"] == pytest.approx(math.sqrt(2) - 1, rel=1e-5)
    assert m["h1_entropy"] == pytest.approx(0.0, abs=1e-7)


def test_tracker_records_tsloss_terms_of_the_prompt_it_is_given():
    """tsloss_terms=True: the row's ts_* columns are the TSLoss terms of the same prompt, and
    ts_stability is measured against the previous record's prompt."""
    g = torch.Generator().manual_seed(5)
    a, b = torch.randn(7, 5, generator=g), torch.randn(7, 5, generator=g)
    tracker = TopologyTracker(1, tsloss_terms=True)
    tracker.update(0, a)
    tracker.update(1, b)
    tracker.update(2, torch.randn(9, 5, generator=g))  # N changes: stability not measured
    r0, r1, r2 = tracker.flush()
    _, ta = ts_loss(a, return_terms=True)
    _, tb = ts_loss(b, previous=ta["topology"], stability=1.0, return_terms=True)
    for name in ("connectivity", "redundancy", "scale"):
        assert r0["ts_" + name] == pytest.approx(float(ta[name]), rel=1e-6)
        assert r1["ts_" + name] == pytest.approx(float(tb[name]), rel=1e-6)
    assert r0["ts_stability"] == 0.0 and math.isnan(r2["ts_stability"])
    assert r1["ts_stability"] == pytest.approx(float(tb["stability"]), rel=1e-6) and \
        r1["ts_stability"] > 0
    assert r0["h1_entropy"] == 0.0 and str(to_floats({"z": -torch.zeros(())})["z"]) == "0.0"


def test_linear_head_needs_a_label_count():
    for bad, exc in [(0, ValueError), (2.0, TypeError), (None, TypeError)]:
        with pytest.raises(exc, match="num_labels"):
            SoftPromptModel(tiny_bert(), 4, head="linear", num_labels=bad)


def test_label_targets_are_embedded_without_dropout():
    """A model built from a config starts in train mode: the label-description targets, computed
    once, were embedded with dropout on (fixed noise in every later score). They are embedded in
    eval mode, and the model's own mode is left as it was."""
    cfg = transformers.BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1,
                                  num_attention_heads=4, intermediate_size=64,
                                  hidden_dropout_prob=0.5, attention_probs_dropout_prob=0.5)
    torch.manual_seed(0)
    model = transformers.BertModel(cfg)
    assert model.training
    desc = torch.randint(1, 64, (3, 4), generator=torch.Generator().manual_seed(6))
    spm = SoftPromptModel(model, 4, head="similarity", label_inputs=(desc, torch.ones_like(desc)))
    assert model.training
    with torch.no_grad():
        h = model.eval()(input_ids=desc).last_hidden_state.mean(1)
    torch.testing.assert_close(spm.label_emb, torch.nn.functional.normalize(h, dim=-1))


def test_similarity_logits_are_cosines_times_20():
    """The head-free logits are 20 times a cosine (docs/compare.md), so every logit lies in
    [-20, 20] and some are well above 1. (The test above scales its reference by the same
    constant, so it holds for any value.)"""
    assert TEMPERATURE == 20.0
    desc = torch.randint(1, 64, (3, 4), generator=torch.Generator().manual_seed(6))
    spm = SoftPromptModel(tiny_bert(), 2, head="similarity",
                          label_inputs=(desc, torch.ones_like(desc)),
                          generator=torch.Generator().manual_seed(0))
    ids = torch.randint(1, 64, (5, 7), generator=torch.Generator().manual_seed(1))
    logits = spm(ids, torch.ones_like(ids))["logits"]
    assert float(logits.abs().max()) <= 20.0 + 1e-4
    assert float(logits.abs().max()) > 1.0  # cosines of BERT embeddings, scaled by 20


def test_linear_head_pools_the_real_tokens_only():
    """Padding columns change no logit of the linear head (the similarity head normalises the pooled
    vector, so only the linear head shows a wrong denominator)."""
    spm = SoftPromptModel(tiny_bert(), 3, head="linear", num_labels=3,
                          generator=torch.Generator().manual_seed(0))
    ids = torch.randint(1, 64, (2, 5), generator=torch.Generator().manual_seed(2))
    mask = torch.ones_like(ids)
    padded = torch.cat([ids, torch.zeros(2, 4, dtype=ids.dtype)], 1)
    pmask = torch.cat([mask, torch.zeros(2, 4, dtype=mask.dtype)], 1)
    with torch.no_grad():
        torch.testing.assert_close(spm(padded, pmask)["logits"], spm(ids, mask)["logits"],
                                   rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize("head", ["linear", "similarity"])
def test_an_encoder_model_cast_whole_still_classifies(head, dtype):
    """`.to(dtype)` of the whole SoftPromptModel casts its head or label embeddings too; the pooled
    vector was float32 whatever the model, so both heads failed on a dtype mismatch. The logits
    stay float32 (as the causal ones) and close to the uncast model's."""
    desc = torch.randint(1, 64, (3, 4), generator=torch.Generator().manual_seed(6))
    kw = (dict(num_labels=3) if head == "linear" else
          dict(label_inputs=(desc, torch.ones_like(desc))))
    spm = SoftPromptModel(tiny_bert(), 4, head=head, generator=torch.Generator().manual_seed(0),
                          **kw)
    ids, mask, labels = _encoder_batch()
    with torch.no_grad():
        want = spm(ids, mask)["logits"]
    cast = spm.to(dtype)
    out = cast(ids, mask, labels=labels)
    assert out["logits"].dtype == torch.float32 and torch.isfinite(out["loss"])
    tol = 1e-6 if dtype == torch.float64 else 0.15
    torch.testing.assert_close(out["logits"], want, rtol=tol, atol=tol * 20)
    out["loss"].backward()
    assert cast.prompt.grad is not None and cast.prompt.grad.dtype == dtype


def test_linear_head_is_sized_by_the_hidden_states_without_drawing_from_the_generator():
    """The head's width is the hidden states' (ALBERT projects its embeddings up, OPT-350m its
    hidden states down), read from the config: no pass through the model, whose dropout in
    train mode drew from the generator and moved the head's initial weights."""
    heads = []
    for training in (False, True):
        model = tiny_bert().train(training)
        torch.manual_seed(5)
        spm = SoftPromptModel(model, 4, task="encoder", head="linear", num_labels=3,
                              init="random")
        assert model.training == training  # given back as it was
        heads.append(spm.head.weight.detach().clone())
    assert heads[0].shape == (3, 32) and torch.equal(heads[0], heads[1])
    cfg = transformers.AlbertConfig(vocab_size=64, embedding_size=16, hidden_size=32,
                                    num_hidden_layers=1, num_attention_heads=2,
                                    intermediate_size=64, max_position_embeddings=64)
    albert = SoftPromptModel(transformers.AlbertModel(cfg).eval(), 4, task="encoder",
                             head="linear", num_labels=2)
    assert albert.prompt.shape == (4, 16) and albert.head.weight.shape == (2, 32)
    ids, mask, _ = _encoder_batch()
    assert albert(ids[:, :5], mask[:, :5])["logits"].shape == (12, 2)


def test_linear_head_on_a_funnel_encoder():
    """A probe pass of one token to size the head failed inside Funnel (it pools by 4)."""
    cfg = transformers.FunnelConfig(vocab_size=64, d_model=32, n_head=2, d_head=16, d_inner=64,
                                    block_sizes=[1, 1], num_decoder_layers=1,
                                    max_position_embeddings=64)
    torch.manual_seed(0)
    spm = SoftPromptModel(transformers.FunnelModel(cfg).eval(), 4, task="encoder",
                          head="linear", num_labels=3)
    ids, mask, _ = _encoder_batch()
    assert spm(ids, mask)["logits"].shape == (12, 3)
