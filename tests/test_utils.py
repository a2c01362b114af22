import subprocess
import sys

import pytest

# In a fresh interpreter: the pytest process's own high-water mark is whatever earlier tests reached.
PROBE = """
import numpy as np
from quantir.utils import peak_rss_kb
before = peak_rss_kb()
block = np.ones(64 * 2**20, np.uint8)  # 64 MiB, every page touched
print(before, peak_rss_kb())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="VmHWM is Linux's /proc")
def test_peak_rss_is_this_process_high_water_mark():
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True)
    before, after = (int(v) for v in out.stdout.split())
    # at least most of the block shows (the kernel's RSS counters are per-CPU approximations)
    assert before > 0 and after - before >= 48 * 1024, (before, after)
