"""training/allocator.py: freed memory stays in the process and the next tensor reuses it."""
import subprocess
import sys

import pytest

from tests.test_run import ROOT

# Page faults taken by allocating and filling a 48 MiB tensor after a 64 MiB one was freed (both above
# glibc's largest mmap threshold, 32 MiB: by default each is mapped on allocation and unmapped on free).
SECOND_TENSOR_FAULTS = """
import resource, sys, torch
from ptlab.training.allocator import reuse_freed_memory
if sys.argv[1] == "on":
    assert reuse_freed_memory()
x = torch.ones(2**24); del x
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
x = torch.ones(3 * 2**22)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def faults(setting: str) -> int:
    out = subprocess.run([sys.executable, "-c", SECOND_TENSOR_FAULTS, setting], cwd=ROOT, capture_output=True,
                         text=True, check=True)
    return int(out.stdout.split()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_a_freed_tensor_s_pages_are_reused_without_faults():
    default = faults("off")
    if default < 4096:  # e.g. transparent huge pages on every mapping: the kernel faults 2 MiB at a time
        pytest.skip(f"malloc's default took only {default} faults for 48 MiB here: nothing to compare")
    assert [faults("on") for _ in range(3)] == [0, 0, 0] and default >= 12288  # 12,288 pages of 4 KiB
