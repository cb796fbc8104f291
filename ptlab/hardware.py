"""What the machine computes fast, for defaults that must suit it. At the bottom of the import graph.

`${native_precision:}` in a config resolves to bf16-mixed where bf16 is native (a CPU with AVX512_BF16
or AMX-BF16, a CUDA GPU that supports bf16) and to 32-true elsewhere: on a CPU without them torch
emulates bf16 matmuls (0.3 GFLOP/s against 24 in float32 on an AVX2-only CPU, measured for issue 37),
so bf16 autocast makes a run slower, not faster. A run's resolved config.yaml records the value taken.
"""
from pathlib import Path

NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_flags() -> set[str]:
    """The CPU's feature flags (Linux's /proc/cpuinfo; empty elsewhere)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    line = next((line for line in text.splitlines() if line.startswith(("flags", "Features"))), "")
    return set(line.split(":", 1)[-1].split())


def native_bf16() -> bool:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    return bool(cpu_flags() & set(NATIVE_BF16_FLAGS))


def native_precision() -> str:
    return "bf16-mixed" if native_bf16() else "32-true"


def register_resolvers() -> None:
    """`${native_precision:}` for the configs (called when ptlab is imported)."""
    from omegaconf import OmegaConf

    if not OmegaConf.has_resolver("native_precision"):
        OmegaConf.register_new_resolver("native_precision", native_precision)
