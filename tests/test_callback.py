"""TSLossCallback in a real Trainer run of PEFT prompt tuning on a tiny random causal LM."""
import types

import pytest
import torch

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

import tsloss_cuda  # noqa: E402
from tsloss_cuda.callback import TSLossCallback  # noqa: E402
from tsloss_cuda.loss import loss as tsloss  # noqa: E402
from tsloss_cuda.prompt_tuning import SoftPromptModel, prompt_parameters  # noqa: E402
from tsloss_cuda.tracking import topology_metrics  # noqa: E402

LR, WEIGHT = 0.1, 0.5


def _model():
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1,
                                   num_attention_heads=4, intermediate_size=64)
    base = transformers.LlamaForCausalLM(cfg)
    return peft.get_peft_model(base, peft.PromptTuningConfig(task_type="CAUSAL_LM",
                                                             num_virtual_tokens=6))


def _data(n=16, length=8):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 64, (n, length), generator=g)
    return [{"input_ids": x, "attention_mask": torch.ones_like(x), "labels": x} for x in ids]


class Record(transformers.TrainerCallback):
    """The prompt before training, after the first optimizer step and after training; every
    logs dict seen."""

    def __init__(self):
        self.prompts, self.logs, self.final = [], [], None

    def on_train_begin(self, args, state, control, model=None, **kw):
        self.prompts.append(prompt_parameters(model).detach().clone())

    def on_step_end(self, args, state, control, model=None, **kw):
        if state.global_step == 1:
            self.prompts.append(prompt_parameters(model).detach().clone())

    def on_train_end(self, args, state, control, model=None, **kw):
        self.final = prompt_parameters(model).detach().clone()

    def on_log(self, args, state, control, logs=None, **kw):
        self.logs.append(dict(logs))


KEYS = ["topology/" + k for k in ("h0_count", "h1_count", "h0_total", "ts_connectivity",
                                  "ts_redundancy", "ts_stability", "tsloss")]


def _train(tmp_path, callback, accumulation, max_grad_norm=0.0):
    model, rec = _model(), Record()
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path), max_steps=3, logging_steps=1, report_to=[], use_cpu=True,
        optim="sgd", learning_rate=LR, lr_scheduler_type="constant", max_grad_norm=max_grad_norm,
        per_device_train_batch_size=4 // accumulation, gradient_accumulation_steps=accumulation,
        save_strategy="no", disable_tqdm=True, seed=0)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=_data(),
                                   callbacks=[rec])
    if callback is not None:
        callback.install(trainer)
    trainer.train()
    return rec, trainer


@pytest.mark.parametrize("accumulation", [1, 2])
def test_callback_adds_the_tsloss_gradient(tmp_path, accumulation):
    plain, _ = _train(tmp_path / "plain", None, accumulation)
    cb = TSLossCallback(WEIGHT)
    with_ts, trainer = _train(tmp_path / "ts", cb, accumulation)
    p0 = with_ts.prompts[0]
    assert torch.equal(p0, plain.prompts[0])  # same start, same batches
    x = p0.clone().requires_grad_()
    (g,) = torch.autograd.grad(tsloss(x), x)
    # SGD: p1 = p0 - lr·(g_task + weight·g_ts), and g_task is the same in both runs.
    diff = with_ts.prompts[1] - plain.prompts[1]
    assert g.abs().max() > 1e-3
    torch.testing.assert_close(diff, -LR * WEIGHT * g, atol=2e-6, rtol=1e-4)

    keys = KEYS
    train_logs = [l for l in with_ts.logs if "loss" in l]
    assert len(train_logs) == 3  # a reporter registered after it sees the keys
    for logs in train_logs:
        assert all(k in logs for k in keys), sorted(logs)
    assert train_logs[0]["topology/ts_stability"] == 0.0  # no previous log yet
    assert train_logs[1]["topology/ts_stability"] > 0.0
    hist = [h for h in trainer.state.log_history if "loss" in h]
    assert all(k in h for h in hist for k in keys)
    assert not any(k.startswith("topology/") for l in plain.logs for k in l)


def test_install_registers_once(tmp_path):
    """Passed to the Trainer and installed too, the callback runs once per step, first."""
    rec, cb = Record(), TSLossCallback(WEIGHT)
    args = transformers.TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True,
                                          max_steps=1, save_strategy="no")
    trainer = transformers.Trainer(model=_model(), args=args, train_dataset=_data(),
                                   callbacks=[rec, cb])
    assert cb.install(trainer) is cb and cb.install(trainer) is cb
    callbacks = trainer.callback_handler.callbacks
    assert callbacks[0] is cb and sum(c is cb for c in callbacks) == 1
    assert any(c is rec for c in callbacks)


def test_tsloss_gradient_is_not_clipped(tmp_path):
    """With max_grad_norm tiny, the Trainer clips the task gradient to that norm, and the TSLoss
    gradient, added after the clipping, still moves the prompt by -lr·weight·∇TSLoss."""
    clip = 1e-3
    plain, _ = _train(tmp_path / "plain", None, 1, max_grad_norm=clip)
    with_ts, _ = _train(tmp_path / "ts", TSLossCallback(WEIGHT), 1, max_grad_norm=clip)
    p0 = with_ts.prompts[0]
    assert torch.equal(p0, plain.prompts[0])
    # The clipping is active: the plain run's first SGD step has norm lr·clip (the prompt is the
    # only trainable parameter), far below that of the TSLoss step.
    step_plain = (plain.prompts[1] - p0).norm()
    torch.testing.assert_close(step_plain, torch.tensor(LR * clip), rtol=1e-3, atol=0.0)
    x = p0.clone().requires_grad_()
    (g,) = torch.autograd.grad(tsloss(x), x)
    assert (LR * WEIGHT * g).norm() > 10 * step_plain
    # Had the TSLoss gradient been clipped with the task gradient, the whole step would have
    # norm lr·clip.
    diff = with_ts.prompts[1] - plain.prompts[1]
    torch.testing.assert_close(diff, -LR * WEIGHT * g, atol=2e-6, rtol=1e-4)


def test_weight_zero_only_logs_the_topology(tmp_path):
    plain, _ = _train(tmp_path / "plain", None, 1)
    cb = TSLossCallback(0.0)
    zero, trainer = _train(tmp_path / "zero", cb, 1)
    assert torch.equal(zero.prompts[0], plain.prompts[0])
    assert not torch.equal(plain.final, plain.prompts[0])  # training moved the prompt
    assert torch.equal(zero.final, plain.final)  # ... and weight 0 changed nothing
    train_logs = [l for l in zero.logs if "loss" in l]
    assert len(train_logs) == 3
    logged = [k for k in KEYS if k != "topology/tsloss"]  # TSLoss is never evaluated
    for logs in train_logs:
        assert all(k in logs for k in logged), sorted(logs)
    hist = [h for h in trainer.state.log_history if "loss" in h]
    assert all(k in h for h in hist for k in logged)
    # Weight 0 skips TSLoss itself (its cost and its NaN risk), not only its gradient.
    assert cb.last_loss is None
    assert not any("topology/tsloss" in l for l in train_logs + hist)
    # The logged topology is that of the prompt after the logged step.
    want = topology_metrics(zero.prompts[1])
    for k in ("h0_count", "h0_total", "h0_entropy"):
        assert train_logs[0]["topology/" + k] == pytest.approx(float(want[k]), rel=1e-6), k
    assert train_logs[0]["topology/ts_stability"] == 0.0
    assert train_logs[1]["topology/ts_stability"] > 0.0


def test_weight_must_be_nonnegative():
    with pytest.raises(ValueError, match="weight"):
        TSLossCallback(-1.0)
    for bad in (float("nan"), float("inf")):  # would make every gradient NaN or inf
        with pytest.raises(ValueError, match="weight"):
            TSLossCallback(bad)
    with pytest.raises(TypeError, match="weight must be a real number"):
        TSLossCallback("0.1")
    with pytest.raises(TypeError, match="prefix must be a str"):  # failed at the first log
        TSLossCallback(WEIGHT, prefix=None)


def _hooks():
    """(args, state, control) for calling the callback's hooks without a Trainer run."""
    args = transformers.TrainingArguments("unused", report_to=[], use_cpu=True)
    return args, transformers.TrainerState(), transformers.TrainerControl()


def _log_once(cb, model, step=2):
    """The callback's keys added to one training log at ``step``, without a Trainer run."""
    args, state, control = _hooks()
    cb.on_train_begin(args, state, control, model=model)
    state.global_step = step
    logs = {"loss": 1.0}
    cb.on_log(args, state, control, logs=logs, model=model)
    return logs


def test_second_training_run_restarts_the_stability_term():
    """trainer.train() again (a new run, or after a prompt reset) must not pull the prompt
    towards the last prompt of the previous run: the trained stability term starts at 0."""
    cb, model = TSLossCallback(WEIGHT, stability=1.0), _model()
    prompt = prompt_parameters(model)
    args, state, control = _hooks()
    g = torch.Generator().manual_seed(2)

    def step_stability():
        cb.on_pre_optimizer_step(args, state, control, model=model)
        with torch.no_grad():  # a stand-in for the optimizer moving the prompt
            prompt.add_(0.3 * torch.randn(prompt.shape, generator=g))
        return float(cb.loss_fn.last_terms["stability"])

    cb.on_train_begin(args, state, control, model=model)
    assert step_stability() == 0.0
    assert step_stability() > 0.0  # within a run, against the previous step's prompt
    cb.on_train_begin(args, state, control, model=model)
    assert step_stability() == 0.0


def test_weight_zero_leaves_the_gradient_alone():
    """Weight 0 adds nothing, not even a zero gradient where none was: a prompt without .grad
    keeps None (the optimizer skips it) and TSLoss is not evaluated."""
    cb, model = TSLossCallback(0.0), _model()
    args, state, control = _hooks()
    cb.on_train_begin(args, state, control, model=model)
    cb.on_pre_optimizer_step(args, state, control, model=model)
    assert prompt_parameters(model).grad is None and cb.last_loss is None
    state.global_step = 1
    logs = {"loss": 1.0}
    cb.on_log(args, state, control, logs=logs, model=model)
    assert "topology/h0_count" in logs and "topology/tsloss" not in logs


def test_second_training_run_restarts_the_logged_stability():
    """The logged ts_stability of a new trainer.train() is measured from no previous prompt,
    not from the last log of the previous run (whose prompt may have been replaced)."""
    cb, model = TSLossCallback(WEIGHT), _model()
    prompt = prompt_parameters(model)
    g = torch.Generator().manual_seed(2)

    def move():
        with torch.no_grad():
            prompt.add_(0.3 * torch.randn(prompt.shape, generator=g))

    assert _log_once(cb, model, step=2)["topology/ts_stability"] == 0.0
    move()
    args, state, control = _hooks()
    state.global_step = 3
    logs = {"loss": 1.0}
    cb.on_log(args, state, control, logs=logs, model=model)
    assert logs["topology/ts_stability"] > 0.0  # the same run: measured from step 2's prompt
    move()
    assert _log_once(cb, model, step=4)["topology/ts_stability"] == 0.0  # a new run


def test_eval_logs_get_no_topology():
    """An evaluation log (no "loss") is not a training log: it gets no summary, and does not
    become the previous prompt that the next training log's ts_stability is measured from."""
    cb, model = TSLossCallback(WEIGHT), _model()
    args, state, control = _hooks()
    cb.on_train_begin(args, state, control, model=model)
    state.global_step = 2
    state.log_history = [{"eval_loss": 1.0, "step": 2}]
    logs = {"eval_loss": 1.0}
    cb.on_log(args, state, control, logs=logs, model=model)
    assert logs == {"eval_loss": 1.0} and state.log_history == [{"eval_loss": 1.0, "step": 2}]
    with torch.no_grad():
        prompt = prompt_parameters(model)
        prompt.add_(0.3 * torch.randn(prompt.shape, generator=torch.Generator().manual_seed(2)))
    state.global_step = 3
    logs = {"loss": 1.0}
    cb.on_log(args, state, control, logs=logs, model=model)
    assert logs["topology/ts_stability"] == 0.0  # the first training log


def test_log_history_is_updated_only_at_its_own_step():
    """The Trainer copied logs into log_history before on_log: the summary goes into that entry,
    never into an earlier step's (a log_history entry the Trainer did not add for this log)."""
    cb, model = TSLossCallback(WEIGHT), _model()
    args, state, control = _hooks()
    cb.on_train_begin(args, state, control, model=model)
    state.global_step = 3
    state.log_history = [{"loss": 0.9, "step": 2}]
    cb.on_log(args, state, control, logs={"loss": 0.8}, model=model)
    assert state.log_history == [{"loss": 0.9, "step": 2}]
    state.log_history.append({"loss": 0.8, "step": 3})
    logs = {"loss": 0.8}
    cb.on_log(args, state, control, logs=logs, model=model)
    assert "topology/h0_count" in logs and state.log_history[-1] == dict(logs, step=3)
    assert state.log_history[0] == {"loss": 0.9, "step": 2}


def test_logged_terms_use_the_callback_options():
    """The logged ts_* terms are those the callback trains with, unweighted: computed with its
    normalize / connectivity_mode / target / p, not TSLoss's defaults."""
    opts = dict(normalize="none", connectivity_mode="target", target=0.5, p=2.0)
    model = _model()
    with torch.no_grad():  # a hexagon of radius 3: one loop, so redundancy and p matter
        angle = torch.arange(6) * (torch.pi / 3)
        prompt_parameters(model).zero_()[:, :2] = 3 * torch.stack([angle.cos(), angle.sin()], 1)
    logs = _log_once(TSLossCallback(WEIGHT, redundancy=3.0, **opts), model)
    _, want = tsloss(prompt_parameters(model).detach(), return_terms=True, **opts)
    _, default = tsloss(prompt_parameters(model).detach(), return_terms=True)
    for name in ("connectivity", "redundancy"):
        got = logs["topology/ts_" + name]
        assert got == pytest.approx(float(want[name]), rel=1e-6), name
        assert got != pytest.approx(float(default[name]), rel=1e-3), name
    assert logs["topology/ts_scale"] == 1.0  # normalize="none" divides by 1


def test_needs_the_pre_optimizer_step_hook(monkeypatch):
    """A Trainer without on_pre_optimizer_step would never add the TSLoss gradient."""
    monkeypatch.delattr(transformers.TrainerCallback, "on_pre_optimizer_step")
    with pytest.raises(ImportError, match="on_pre_optimizer_step.*transformers"):
        TSLossCallback(WEIGHT)


@pytest.mark.parametrize("engine,match", [
    (dict(deepspeed={"zero_optimization": {"stage": 2}}), "DeepSpeed.*\\.grad"),
    (dict(deepspeed_plugin=object()), "DeepSpeed"),  # accelerate launch --use_deepspeed
    (dict(fsdp="full_shard"), "FSDP.*shard"),
    (dict(ACCELERATE_USE_FSDP="true"), "FSDP.*shard"),  # accelerate launch --use_fsdp
])
def test_deepspeed_and_fsdp_are_refused_at_train_begin(engine, match, monkeypatch):
    for name in [k for k in engine if k.isupper()]:
        monkeypatch.setenv(name, engine.pop(name))
    args = types.SimpleNamespace(**engine)
    state, control = transformers.TrainerState(), transformers.TrainerControl()
    with pytest.raises(RuntimeError, match=match):
        TSLossCallback(WEIGHT).on_train_begin(args, state, control, model=_model())


def test_analyze_reads_a_trainer_runs_adapter_checkpoints(tmp_path):
    """`python -m tsloss_cuda.analyze OUTPUT_DIR` on a Trainer run of PEFT prompt tuning: its
    checkpoint-STEP/adapter_model.safetensors files, in step order, give the topology of the
    prompt saved at each step (a .safetensors file given directly too)."""
    from safetensors.torch import load_file, save_file

    from tsloss_cuda.analyze import analyze

    model = _model()
    args = transformers.TrainingArguments(str(tmp_path / "run"), max_steps=4, save_steps=2,
                                          learning_rate=LR, report_to=[], use_cpu=True,
                                          disable_tqdm=True, logging_steps=10)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=_data())
    trainer.train()
    trainer.save_model()  # the final adapter beside the checkpoints: not one of them
    assert (tmp_path / "run" / "adapter_model.safetensors").is_file()
    saved = {s: tmp_path / "run" / f"checkpoint-{s}" / "adapter_model.safetensors"
             for s in (2, 4)}
    prompts = {s: load_file(str(p))["prompt_embeddings"] for s, p in saved.items()}
    assert not torch.equal(prompts[2], prompts[4])  # two states of one prompt
    rows = analyze(str(tmp_path / "run"), str(tmp_path / "out"), plots=False)
    assert [r["step"] for r in rows] == [2, 4]
    assert [r["checkpoint"] for r in rows] == [f"checkpoint-{s}/adapter_model.safetensors"
                                               for s in (2, 4)]
    for row, s in zip(rows, (2, 4)):
        want = topology_metrics(prompts[s])
        assert row["h0_total"] == pytest.approx(float(want["h0_total"]), rel=1e-6)
        assert row["h1_count"] == float(want["h1_count"])
    import json
    import shutil
    from tsloss_cuda._cli import CLIError
    other = tmp_path / "other" / "checkpoint-4"
    shutil.copytree(saved[4].parent, other)
    config = json.loads((other / "adapter_config.json").read_text())
    assert config["peft_type"] == "PROMPT_TUNING"
    for change, message in ((dict(peft_type="PREFIX_TUNING"), "a PREFIX_TUNING adapter"),
                            (dict(num_transformer_submodules=2), "holds 2 prompts")):
        (other / "adapter_config.json").write_text(json.dumps({**config, **change}))
        with pytest.raises(CLIError, match=message):  # not a prompt's token vectors
            analyze(str(other.parent), str(tmp_path / "out3"), plots=False)
    (tmp_path / "flat").mkdir()
    save_file({"prompt_embeddings": prompts[4]}, str(tmp_path / "flat" / "step_4.safetensors"))
    flat = analyze(str(tmp_path / "flat"), str(tmp_path / "out2"), plots=False)
    assert flat[0]["step"] == 4 and flat[0]["h0_total"] == rows[1]["h0_total"]


def test_analyze_reads_a_named_adapter_one_folder_deeper(tmp_path):
    """PEFT saves an adapter not named "default" to checkpoint-STEP/NAME/; two adapters in one
    checkpoint are refused by name (analyze reads one prompt a step)."""
    from safetensors.torch import load_file

    from tsloss_cuda._cli import CLIError
    from tsloss_cuda.analyze import analyze

    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1,
                                   num_attention_heads=4, intermediate_size=64)
    config = peft.PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=6)
    model = peft.get_peft_model(transformers.LlamaForCausalLM(cfg), config, adapter_name="mine")
    model.save_pretrained(str(tmp_path / "run" / "checkpoint-3"))
    saved = tmp_path / "run" / "checkpoint-3" / "mine" / "adapter_model.safetensors"
    rows = analyze(str(tmp_path / "run"), str(tmp_path / "out"), plots=False)
    assert [(r["step"], r["checkpoint"]) for r in rows] == [
        (3, "checkpoint-3/mine/adapter_model.safetensors")]
    want = topology_metrics(load_file(str(saved))["prompt_embeddings"])
    assert rows[0]["h0_total"] == pytest.approx(float(want["h0_total"]), rel=1e-6)
    model.add_adapter("other", config)
    model.save_pretrained(str(tmp_path / "run" / "checkpoint-3"))
    with pytest.raises(CLIError, match=r"holds 2 PEFT adapters \(mine, other\)"):
        analyze(str(tmp_path / "run"), str(tmp_path / "out2"), plots=False)


def test_an_encoder_decoder_prompt_is_refused_at_train_begin():
    """A seq2seq PEFT prompt stacks an encoder and a decoder prompt into one embedding: one
    cloud of both would mix them (analyze refuses such an adapter too)."""
    cfg = transformers.T5Config(vocab_size=64, d_model=16, d_kv=4, d_ff=32, num_layers=1,
                                num_heads=2, decoder_start_token_id=0)
    model = peft.get_peft_model(transformers.T5ForConditionalGeneration(cfg),
                                peft.PromptTuningConfig(task_type="SEQ_2_SEQ_LM",
                                                        num_virtual_tokens=4))
    with pytest.raises(ValueError, match="holds 2 prompts stacked"):  # nor the one-line recipe
        prompt_parameters(model)
    args, state, control = _hooks()
    with pytest.raises(RuntimeError, match="adapter 'default' holds 2 prompts"):
        TSLossCallback(WEIGHT).on_train_begin(args, state, control, model=model)
    TSLossCallback(WEIGHT).on_train_begin(args, state, control, model=_model())  # one prompt


@pytest.mark.parametrize("bad", ["nan", "past float32"])
def test_a_diverged_prompt_logs_nan_and_the_run_goes_on(bad):
    """On the CPU the engine raises for a NaN prompt, and for one whose distances overflow
    float32; the callback logs NaN instead, as on CUDA, and leaves the gradient alone."""
    cb, model = TSLossCallback(WEIGHT), _model()
    args, state, control = _hooks()
    cb.on_train_begin(args, state, control, model=model)
    prompt = prompt_parameters(model)
    with torch.no_grad():
        if bad == "nan":
            prompt[0, 0] = float("nan")
        else:
            prompt.mul_(1e38 / float(prompt.abs().max()))
    prompt.grad = torch.ones_like(prompt)
    cb.on_pre_optimizer_step(args, state, control, model=model)
    assert torch.equal(prompt.grad, torch.ones_like(prompt))
    state.global_step = 1
    logs = {"loss": float("nan")}
    cb.on_log(args, state, control, logs=logs, model=model)
    for key in ("tsloss", "ts_connectivity", "h0_total"):
        assert logs["topology/" + key] != logs["topology/" + key], key  # NaN


def test_logged_tsloss_is_the_trained_loss_of_the_step(tmp_path):
    """``topology/tsloss`` at step k is TSLoss (unweighted) of the prompt the k-th optimizer
    step started from, with stability against the prompt before it (weighted up here: one SGD
    step moves the diagram by ~1e-8 of the loss)."""
    cb = TSLossCallback(WEIGHT, stability=1e4)
    rec, _ = _train(tmp_path, cb, 1)
    logs = [l for l in rec.logs if "loss" in l]
    first = tsloss(rec.prompts[0], stability=1e4)  # no previous prompt: no stability term
    assert logs[0]["topology/tsloss"] == pytest.approx(float(first), rel=1e-6)
    fn = tsloss_cuda.TSLoss(stability=1e4)
    fn(rec.prompts[0])
    second = fn(rec.prompts[1])
    without = tsloss(rec.prompts[1])
    assert float(second) > float(without) * (1 + 1e-5)  # the stability term counts
    assert logs[1]["topology/tsloss"] == pytest.approx(float(second), rel=1e-6)


@pytest.mark.parametrize("unscaled_before", [False, True])
def test_fp16_gradients_are_unscaled_before_the_tsloss_gradient_joins_them(unscaled_before):
    """A Trainer that neither clips nor measures the gradient norm leaves fp16 gradients scaled
    at the hook: added to them unscaled, the TSLoss gradient came out of scaler.step divided by
    the loss scale (65536x too small). Where the Trainer did unscale, nothing changes."""
    model = _model()
    p = prompt_parameters(model)
    p0 = p.detach().clone()
    inner = torch.optim.SGD([p], lr=LR)
    scaler = torch.amp.GradScaler("cpu", init_scale=65536.0)
    accelerated = types.SimpleNamespace(optimizer=inner, scaler=scaler)  # accelerate's wrapper
    args, state, control = _hooks()
    cb = TSLossCallback(WEIGHT)
    cb.on_train_begin(args, state, control, model=model)
    scaler.scale((p * 0).sum()).backward()  # a zero task gradient, scaled
    if unscaled_before:
        scaler.unscale_(inner)
    cb.on_pre_optimizer_step(args, state, control, model=model, optimizer=accelerated)
    scaler.step(inner)
    x = p0.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(tsloss(x), x)
    torch.testing.assert_close(p.detach() - p0, -LR * WEIGHT * g, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("optim", ["lomo", "adalomo", "galore_adamw_layerwise",
                                   "apollo_adamw_layerwise"])
def test_optimizers_that_step_during_backward_are_refused(optim):
    """They update every parameter in backward hooks and their step() does nothing: the TSLoss
    gradient added before step() would silently never train."""
    args = types.SimpleNamespace(optim=optim)
    state, control = transformers.TrainerState(), transformers.TrainerControl()
    with pytest.raises(RuntimeError, match=f"optim='{optim}'.*during the backward pass"):
        TSLossCallback(WEIGHT).on_train_begin(args, state, control, model=_model())


def test_a_model_without_a_soft_prompt_is_refused_at_train_begin():
    """A LoRA model has no prompt: said at train begin, not after the first optimizer step's
    forward and backward passes."""
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1,
                                   num_attention_heads=4, intermediate_size=64)
    lora = peft.get_peft_model(transformers.LlamaForCausalLM(cfg),
                               peft.LoraConfig(task_type="CAUSAL_LM", target_modules=["q_proj"]))
    args, state, control = _hooks()
    with pytest.raises(ValueError, match="no soft prompt"):
        TSLossCallback(WEIGHT).on_train_begin(args, state, control, model=lora)


def test_the_prompt_of_a_compiled_model_is_found():
    """Trainer(model=torch.compile(model)) with the callback: torch.compile's wrapper is seen
    through to the model's own parameter, for a SoftPromptModel (it was refused as holding no
    soft prompt) as for a PEFT model (whose prompt_encoder the wrapper forwards)."""
    torch.manual_seed(0)
    bert = transformers.BertModel(transformers.BertConfig(
        vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=32))
    spm = SoftPromptModel(bert, 6, num_labels=3)
    for model in (spm, _model()):
        assert prompt_parameters(torch.compile(model)) is prompt_parameters(model)
    args, state, control = _hooks()
    cb = TSLossCallback(WEIGHT)
    cb.on_train_begin(args, state, control, model=torch.compile(spm))
    cb.on_pre_optimizer_step(args, state, control, model=torch.compile(spm))
    assert spm.prompt.grad is not None and spm.prompt.grad.abs().max() > 0


def test_unscale_reraises_a_runtime_error_other_than_already_unscaled():
    """Only "already been called" means the Trainer unscaled first; any other scaler error
    surfaces, rather than leave the gradients scaled while the TSLoss gradient joins them
    unscaled."""
    from tsloss_cuda.callback import _unscale

    class Scaler:
        def __init__(self, msg):
            self.msg, self.calls = msg, 0

        def is_enabled(self):
            return True

        def unscale_(self, opt):
            self.calls += 1
            raise RuntimeError(self.msg)

    inner = object()
    done = Scaler("unscale_() has already been called on this optimizer since the last update()")
    _unscale(types.SimpleNamespace(optimizer=inner, scaler=done))  # swallowed
    assert done.calls == 1
    other = Scaler("CUDA error: an illegal memory access was encountered")
    with pytest.raises(RuntimeError, match="illegal memory access"):
        _unscale(types.SimpleNamespace(optimizer=inner, scaler=other))


def _classifier(task_type="SEQ_CLS"):
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1,
                                  num_attention_heads=4, intermediate_size=64, num_labels=2,
                                  hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    cls = {"SEQ_CLS": transformers.BertForSequenceClassification,
           "TOKEN_CLS": transformers.BertForTokenClassification,
           "QUESTION_ANS": transformers.BertForQuestionAnswering}[task_type]
    return peft.get_peft_model(cls(cfg), peft.PromptTuningConfig(task_type=task_type,
                                                                  num_virtual_tokens=5))


def test_a_prompt_narrower_than_the_embeddings_is_refused_at_train_begin():
    """PEFT sizes the prompt by config.hidden_size: an ALBERT's (embeddings 16 wide, hidden
    states 32) was 32 wide and the run failed inside PEFT's first forward. Refused when
    training begins, naming the setting; token_dim=16 trains."""
    from tsloss_cuda.callback import TSLossCallback
    state, control = transformers.TrainerState(), transformers.TrainerControl()
    args = transformers.TrainingArguments("unused", report_to=[], use_cpu=True)
    for token_dim, ok in ((None, False), (16, True)):
        torch.manual_seed(0)
        base = transformers.AlbertForSequenceClassification(transformers.AlbertConfig(
            vocab_size=64, embedding_size=16, hidden_size=32, num_hidden_layers=1,
            num_attention_heads=2, intermediate_size=64, num_labels=2))
        extra = {} if token_dim is None else {"token_dim": token_dim}
        model = peft.get_peft_model(base, peft.PromptTuningConfig(
            task_type="SEQ_CLS", num_virtual_tokens=4, **extra))
        cb = TSLossCallback(0.1)
        if ok:
            cb.on_train_begin(args, state, control, model=model)
        else:
            with pytest.raises(ValueError, match=r"soft prompt is 32 wide but "
                                                 r"AlbertForSequenceClassification's input "
                                                 r"embeddings are 16 wide .*token_dim=16"):
                cb.on_train_begin(args, state, control, model=model)


@pytest.mark.parametrize("task_type", ["SEQ_CLS", "TOKEN_CLS"])
def test_a_trainer_that_sums_accumulated_losses_is_warned_of(task_type, recwarn):
    """transformers leaves the 1/G of gradient accumulation to a model whose forward takes
    **kwargs; its classifiers' losses ignore num_items_in_batch, so their task gradient is G
    times its mean and TSLoss weighed G times less than `weight` (the docstring said no scaling
    was needed). Warned of, with G > 1 only, and not for a causal LM (whose loss divides by
    num_items_in_batch)."""
    state, control = transformers.TrainerState(), transformers.TrainerControl()
    for g, model, warned in [(2, _classifier(task_type), True), (1, _classifier(task_type), False),
                             (2, _model(), False),
                             # start/end positions, no `labels`: no item count, the Trainer divides
                             (2, _classifier("QUESTION_ANS"), False)]:
        args = types.SimpleNamespace(gradient_accumulation_steps=g)
        recwarn.clear()
        TSLossCallback(WEIGHT).on_train_begin(args, state, control, model=model)
        hits = [w for w in recwarn if "model_accepts_loss_kwargs = False" in str(w.message)]
        assert len(hits) == int(warned), (task_type, g, [str(w.message) for w in recwarn])
    TSLossCallback(0.0).on_train_begin(types.SimpleNamespace(gradient_accumulation_steps=2),
                                       state, control, model=_classifier(task_type))
    assert not [w for w in recwarn if "model_accepts_loss_kwargs" in str(w.message)]


def test_the_warnings_advice_gives_the_mean_task_gradient_and_silences_it(tmp_path, recwarn):
    """What the warning advises: with trainer.model_accepts_loss_kwargs = False, one step of a
    sequence classifier at G = 2 moves the prompt as at G = 1 (weight 0: the task alone), and an
    installed callback reads the Trainer's setting, so it no longer warns (it read the model's
    only, and warned on)."""
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, 64, (4, 8), generator=g)
    data = [{"input_ids": x, "attention_mask": torch.ones_like(x), "labels": torch.tensor(i % 2)}
            for i, x in enumerate(ids)]
    steps = {}
    for accumulation in (1, 2):
        model = _classifier()
        before = prompt_parameters(model).detach().clone()
        args = transformers.TrainingArguments(
            output_dir=str(tmp_path / str(accumulation)), max_steps=1, report_to=[],
            use_cpu=True, optim="sgd", learning_rate=LR, lr_scheduler_type="constant",
            max_grad_norm=0.0, per_device_train_batch_size=4 // accumulation,
            gradient_accumulation_steps=accumulation, save_strategy="no", disable_tqdm=True,
            seed=0)
        trainer = transformers.Trainer(model=model, args=args, train_dataset=data)
        TSLossCallback(0.0).install(trainer)
        trainer.model_accepts_loss_kwargs = False
        trainer.train()
        steps[accumulation] = prompt_parameters(model).detach() - before
    assert steps[1].abs().max() > 0
    torch.testing.assert_close(steps[2], steps[1], rtol=1e-4, atol=1e-7)
    state, control = transformers.TrainerState(), transformers.TrainerControl()
    for advised in (False, True):
        trainer = transformers.Trainer(model=_classifier(), args=args, train_dataset=data)
        callback = TSLossCallback(WEIGHT).install(trainer)
        trainer.model_accepts_loss_kwargs = not advised
        recwarn.clear()
        callback.on_train_begin(args, state, control, model=trainer.model)
        hits = [w for w in recwarn if "model_accepts_loss_kwargs = False" in str(w.message)]
        assert len(hits) == int(not advised)
    import pickle
    assert pickle.loads(pickle.dumps(callback))._trainer is None  # a weak reference, dropped
    # Installed in a Trainer that took the advice, then given to another that did not
    # (callbacks=[...]): it judged the second run by the first Trainer's settings, unwarned.
    advised = trainer  # the last one above: model_accepts_loss_kwargs = False, and installed
    other = transformers.Trainer(model=_classifier(), args=args, train_dataset=data,
                                 callbacks=[callback])
    recwarn.clear()
    callback.on_train_begin(args, state, control, model=other.model)
    assert [w for w in recwarn if "model_accepts_loss_kwargs = False" in str(w.message)]
    assert advised.model_accepts_loss_kwargs is False
    # The Trainer's own word on the 1/G (loss_is_scaled_for_ga, set by a user) settles it,
    # whatever the model takes: no warning either way.
    for scaled in (False, True):
        trainer = transformers.Trainer(model=_classifier(), args=args, train_dataset=data)
        callback = TSLossCallback(WEIGHT).install(trainer)
        trainer.model_accepts_loss_kwargs = True  # warned above
        trainer.loss_is_scaled_for_ga = scaled
        recwarn.clear()
        callback.on_train_begin(args, state, control, model=trainer.model)
        assert not [w for w in recwarn if "model_accepts_loss_kwargs" in str(w.message)]
