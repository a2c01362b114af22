import sys

import numpy as np
import pytest

from quantir.utils import peak_rss_kb


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="VmHWM is Linux's /proc")
def test_peak_rss_is_this_process_high_water_mark():
    before = peak_rss_kb()
    block = np.ones(64 * 2**20, np.uint8)  # 64 MiB, every page touched
    after = peak_rss_kb()
    # at least most of the block shows (some pages may have been resident; the kernel's RSS counters
    # are per-CPU approximations, so the mark can even move back by a few hundred kB)
    assert before > 0 and after - before >= 48 * 1024, (before, after)
    del block
