"""Quantization: full-integer PT2E quantizer, exact fake quantizers, PTQ calibration and ODM.

torchao is imported here once with its CUDA-kernel warnings silenced (harmless on CPU machines).
"""

from quantir.utils import import_torchao

import_torchao()
