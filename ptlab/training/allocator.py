"""Keep freed memory in the process for the next tensor (glibc malloc), instead of handing it back.

glibc's malloc serves a large request (from 128 KiB, the threshold rising with what is freed, to at
most 32 MiB) with its own mmap and returns it to the kernel on free; it also trims the heap's free
top. The next tensor of that size is then fresh pages, and the kernel faults in and zeroes each 4
KiB page on first touch. A training step allocates and frees the same large tensors every time
(logits, activations, and on a tied LM head / embedding a full-vocabulary gradient per forward:
SmolLM2's 49,152 x 576 is 113 MB), so much of it went to page faults. SmolLM2's forward+backward on
one bench rollout (16 x 64 tokens, 4 buckets), medians of 5 in separate processes: 6.9-8.3 s over
six processes with malloc's default (3.2-3.9 M page faults, 14-17 s of kernel time per process),
5.6-6.1 s over four with this setting (1.0 M faults, 4-5 s); in a loop of 10 steps with generation
and AdamW the faults stop after the third step, and the peak RSS was 4.79 GB against 4.78. PyTorch's
CPU tuning guide recommends the same for training (jemalloc or TCMalloc, which keep freed memory);
this is glibc's own switch, with nothing to preload.

The values computed are the same bit for bit: only where the bytes live changes. The cost: a freed
block is not always reused for a request of the same size (torch's aligned allocations ask a little
more), so the heap can grow past the live peak; the SmolLM2 preset with full fine-tuning peaked at
6.5 GiB against 6.2 in one run each.
"""
import ctypes
import ctypes.util
import platform

M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # glibc's mallopt parameters (malloc.h)
INT_MAX = 2**31 - 1


def reuse_freed_memory() -> bool:
    """Serve every allocation from malloc's heap (no mmap of its own) and never trim the heap, so
    freed memory stays mapped and is reused. True if set; False where malloc is not glibc's (macOS,
    musl), where it changes nothing. Takes effect for allocations after the call; the process's
    resident memory then stays at its peak."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    return bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD, INT_MAX))
