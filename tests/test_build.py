"""How the extension was linked: facts that decide whether it can live beside torch."""
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import tsloss_cuda
import tsloss_cuda._C as ext
from tsloss_cuda.build_info import source_digest


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} (binutils) not installed")
    return path


def test_extension_shares_torchs_libstdcxx():
    # A static libstdc++ copy inside _C.so (e.g. from LDFLAGS=-static-libstdc++) made every
    # error message with a number segfault beside torch's shared libstdc++ (reproduced on
    # Ubuntu 24.04; seen on an H200 host). Such a build has no NEEDED libstdc++.so and exports
    # libstdc++'s locale code itself (the dynamic symbol table survives stripping).
    dyn = subprocess.run([_tool("readelf"), "-d", ext.__file__], capture_output=True, text=True,
                         check=True).stdout
    assert "libstdc++.so" in dyn, dyn
    syms = subprocess.run([_tool("nm"), "-D", "-C", "--defined-only", ext.__file__],
                          capture_output=True, text=True, check=True).stdout
    leaked = [ln for ln in syms.splitlines() if "std::locale::" in ln or "codecvt<" in ln]
    assert not leaked, leaked[:5]


def test_build_refuses_fast_math():
    # Fast math would change the diagrams silently (on the GPU nvcc defines no macro the code
    # could test), so setup.py stops before compiling and names the variable.
    root = Path(__file__).resolve().parents[1]
    unsafe = ("CFLAGS", "CXXFLAGS", "CPPFLAGS", "NVCC_APPEND_FLAGS", "NVCC_PREPEND_FLAGS")
    base = {k: v for k, v in os.environ.items() if k not in unsafe}

    def name(extra):
        return subprocess.run([sys.executable, "setup.py", "--name"], cwd=root,
                              env=dict(base, **extra), capture_output=True, text=True,
                              timeout=120)

    for var, flags, bad in [("CXXFLAGS", "-O2 -ffast-math", "-ffast-math"),
                            ("NVCC_APPEND_FLAGS", "-use_fast_math", "-use_fast_math"),
                            ("NVCC_PREPEND_FLAGS", "-Xcompiler=-fPIC,-Ofast", "-Ofast"),
                            ("NVCC_APPEND_FLAGS", "-Xcompiler -O2,-freciprocal-math",
                             "-freciprocal-math"),
                            ("NVCC_APPEND_FLAGS", "--ftz true", "--ftz=true")]:
        out = name({var: flags})
        assert out.returncode != 0 and f"${var} contains {bad}," in out.stderr, out.stderr[-500:]
    # A later -O3 of ours cancels -Ofast in CFLAGS; --ftz false is the default.
    clean = name({"CXXFLAGS": "-O2 -Ofast", "NVCC_APPEND_FLAGS": "-lineinfo --ftz false"})
    assert clean.returncode == 0 and "tsloss_cuda" in clean.stdout, clean.stderr[-500:]


def test_the_cxx_standard_is_left_to_torch():
    # torch 2.14's headers refuse C++17 ("C++20 or later compatible compiler is required to use
    # ATen"): setup.py's -std=c++17 broke every build against it, the CUDA one included
    # (checked with 2.14.1+cu130). torch's BuildExtension adds the standard its headers need
    # where the flags name none; only nvcc's .cu files, which include no torch header, fix theirs.
    text = (Path(__file__).resolve().parents[1] / "setup.py").read_text()
    stds = re.findall(r'^ *(\w+) = \[.*"-std=[^"]*"', text, re.M)
    assert stds == ["nvcc"], stds


def test_cpu_ops_spread_over_threads_only_where_the_compiler_has_openmp():
    # torch's at::parallel_for runs a batch on one thread in code built without OpenMP; setup.py
    # probes the compiler for it instead of passing -fopenmp blindly, and warns when it has to
    # leave it out (macOS always). This machine's GCC has it.
    assert tsloss_cuda.build_info()["parallel"] is True
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "setup.py", "--name"], cwd=root,
                         env=dict(os.environ, CXX="/nonexistent/c++"), capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip().endswith("tsloss_cuda"), out.stderr[-500:]
    assert "/nonexistent/c++ cannot build OpenMP code" in out.stdout, out.stdout[-500:]
    out = subprocess.run([sys.executable, "setup.py", "--name"], cwd=root, capture_output=True,
                         text=True, timeout=120)
    assert "OpenMP" not in out.stdout, out.stdout[-500:]


def test_extension_was_built_from_this_checkout():
    # A stale editable build runs yesterday's kernels under today's tests and benchmarks.
    info = tsloss_cuda.build_info()
    if info["checkout_digest"] is None:
        pytest.skip("installed without its csrc/ checkout")
    assert info["source_digest"] == info["checkout_digest"] and info["stale"] is False, (
        f"{info}: csrc/ changed since the extension was built; rebuild with "
        "`pip install -e . --no-build-isolation`")


def test_source_digest_follows_the_compiled_sources(tmp_path):
    root = Path(tsloss_cuda.__file__).resolve().parent.parent
    shutil.copytree(root / "csrc", tmp_path / "csrc")
    shutil.copy(root / "setup.py", tmp_path / "setup.py")
    digest = source_digest(str(tmp_path))
    assert digest == source_digest(str(root)) and len(digest) == 16
    # Neither the native tests nor the digest's own header are compiled into the extension.
    for skipped in ("native_tests/test_core.cpp", "generated/source_digest.h"):
        (tmp_path / "csrc" / skipped).parent.mkdir(exist_ok=True)
        (tmp_path / "csrc" / skipped).write_text("// changed\n")
        assert source_digest(str(tmp_path)) == digest, skipped
    for compiled in ("core/common.h", "cuda/h1_reduce.cu", "ops.cpp"):
        path = tmp_path / "csrc" / compiled
        before = path.read_bytes()
        path.write_bytes(before + b" ")
        assert source_digest(str(tmp_path)) != digest, compiled
        path.write_bytes(before)
    (tmp_path / "setup.py").write_text("# flags changed\n")
    assert source_digest(str(tmp_path)) != digest
    assert source_digest(str(tmp_path / "nowhere")) is None


def test_the_sdist_holds_what_a_build_from_it_needs(tmp_path):
    """The sdist held setup.py's .cpp files and the package only: no csrc headers, no CUDA
    sources, not tools/build_backend.py (pyproject.toml's backend), so `pip install
    tsloss_cuda-0.1.0.tar.gz` failed at once (MANIFEST.in). Every tracked file a build or the
    native tests read must be in it; nothing generated or compiled."""
    import tarfile
    root = Path(__file__).resolve().parents[1]
    git = shutil.which("git")
    if git is None or not (root / ".git").exists():
        pytest.skip("needs a git checkout (the tracked files are the reference)")
    tracked = subprocess.run([git, "ls-files"], cwd=root, capture_output=True, text=True,
                             check=True).stdout.split()
    needed = {p for p in tracked if p.split("/")[0] in ("csrc", "tools", "python", "tsloss_cuda")
              or p in ("setup.py", "pyproject.toml", "CMakeLists.txt", "README.md")}
    # From a copy of the tracked files: in the checkout, an egg-info's SOURCES.txt left by an
    # earlier sdist or install would list the files whatever MANIFEST.in says.
    src = tmp_path / "src"
    for p in tracked:
        (src / p).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / p, src / p)
    r = subprocess.run([sys.executable, "setup.py", "-q", "sdist", "-d", str(tmp_path / "dist")],
                       cwd=src, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    (archive,) = (tmp_path / "dist").glob("*.tar.gz")
    with tarfile.open(archive) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    assert not sorted(needed - names), sorted(needed - names)[:10]
    # The typing marker and the extension's stub, which setup.py's package_data also puts in
    # wheels and editable installs: without py.typed users' type checkers ignore the annotations.
    assert {"tsloss_cuda/py.typed", "tsloss_cuda/_C.pyi"} <= names
    # Nor half the test suite, which reads the whole checkout (it shipped setuptools' default
    # tests/test*.py without the benchmarks/ and .ci/run they read).
    assert not [n for n in names if n.endswith((".so", ".pyc")) or n.startswith(
        ("csrc/generated/", "tests/"))]


def _scripts_importing_the_package():
    root = Path(__file__).resolve().parents[1]
    return sorted(str(p.relative_to(root)) for d in ("python", "benchmarks")
                  for p in (root / d).glob("*.py")
                  if re.search(r"^(from|import) tsloss_cuda", p.read_text(), re.M))


@pytest.mark.parametrize("script", _scripts_importing_the_package())
def test_scripts_import_the_installed_package_not_their_checkouts(script, tmp_path):
    """compare_report.py and llm_step.py put their checkout first on sys.path: beside a wheel
    install, a checkout without an in-place build then failed to import _C. Each script must
    import the tsloss_cuda its environment provides (here a stand-in on PYTHONPATH)."""
    root = Path(__file__).resolve().parents[1]
    fake = tmp_path / "tsloss_cuda"
    fake.mkdir()
    (fake / "__init__.py").write_text("raise SystemExit('the environment tsloss_cuda')\n")
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    r = subprocess.run([sys.executable, str(root / script), "--help"], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=120)
    assert "the environment tsloss_cuda" in r.stderr, (r.returncode, r.stderr[-1500:])


def test_an_isolated_build_finds_the_torch_the_user_imports(tmp_path):
    """Plain `pip install -e .` builds in an isolated environment: setuptools, no torch. The
    backend then looked for torch only in the environment's own site-packages, so a torch that
    the user's Python imports from elsewhere (the user site, a --system-site-packages base, a
    .pth file's folder) was not found and the build stopped. It now asks that Python, run as the
    user runs it. Emulated: a venv whose torch comes through a .pth file, run without site (-S)
    with only setuptools on its path, and pip's PYTHONNOUSERSITE and PYTHONPATH set."""
    import setuptools
    import torch
    import venv
    root = Path(__file__).resolve().parents[1]
    torch_site = Path(torch.__file__).resolve().parents[1]
    env_dir = tmp_path / "env"
    venv.EnvBuilder(with_pip=False, symlinks=True).create(env_dir)
    python = env_dir / "bin" / "python"
    own_site = subprocess.run([str(python), "-c", "import sysconfig; "
                               "print(sysconfig.get_paths()['purelib'])"],
                              capture_output=True, text=True, check=True).stdout.strip()
    (Path(own_site) / "elsewhere.pth").write_text(f"{torch_site}\n")
    isolated = tmp_path / "overlay"
    isolated.mkdir()
    setuptools_site = Path(setuptools.__file__).resolve().parents[1]
    for name in ("setuptools", "pkg_resources", "_distutils_hack"):
        if (setuptools_site / name).exists():
            (isolated / name).symlink_to(setuptools_site / name)
    code = ("import sys; sys.path[:0] = [sys.argv[1], sys.argv[2]]; import importlib.util\n"
            "assert importlib.util.find_spec('torch') is None  # isolated\n"
            "import build_backend, torch; print(torch.__file__)")
    env = dict(os.environ, PYTHONNOUSERSITE="1", PYTHONPATH=str(isolated))
    out = subprocess.run([str(python), "-S", "-c", code, str(isolated), str(root / "tools")],
                         env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert Path(out.stdout.strip()).resolve() == Path(torch.__file__).resolve()
