# Stub of the compiled extension module (csrc/ops.cpp, tsloss_methods). Importing it registers
# the torch.ops.tsloss_cuda operators, which are typed through torch.ops, not here.

def cpu_levels() -> tuple[int, int]:
    """(detected, active) x86 levels of the CPU kernels: 0 baseline, 3 AVX2, 4 AVX-512."""

def parallel_build() -> bool:
    """Whether the CPU ops spread a batch over torch's threads (False: built without OpenMP)."""

def set_cpu_level(level: int, /) -> bool:
    """Caps the CPU kernels' x86 level at 0, 3 or 4 (-1 lifts the cap); False if the CPU lacks
    it."""

def source_digest() -> str:
    """Digest of the sources the extension was compiled from (tsloss_cuda.build_info)."""

def emulated_clouds() -> int:
    """Clouds run through the host warp emulation so far (tests of TSLOSS_ENGINE=emulated)."""

def emulated_block_reductions() -> int:
    """Of those, H1 reductions run on an emulated block of warps."""

def output_cache_held() -> int:
    """Bytes of freed CPU outputs kept for reuse (TSLOSS_CPU_OUTPUT_CACHE_MB; for the tests)."""
