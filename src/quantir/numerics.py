"""The numeric contract every artifact depends on, in one place (torch-free).

Training (fake-quant), conversion, the TFLite/ONNX exporters and the runtimes must agree on
each of these numbers to the bit; a second spelling of any of them is how parity breaks.
"""

from __future__ import annotations

INT8_MIN, INT8_MAX = -128, 127

# Smallest scale any quantizer may use. Fake-quant, observers and the integer-exact kernels
# clamp to it identically, so a degenerate (all-zero) tensor gets the same grid everywhere.
SCALE_FLOOR = 2**-12

# Model input and output: int8 with zero point -128, so pixel level p in 0..255 is stored as
# p - 128 (lossless); the scale is pixel_max / 255 (1 for 0..255 models, 1/255 for 0..1 models).
IO_ZERO_POINT = INT8_MIN

# TFLite's fixed output quantization of its int8 TANH and LOGISTIC kernels: (scale, zero point).
TANH_QPARAMS = (1.0 / 128.0, 0)
SIGMOID_QPARAMS = (1.0 / 256.0, INT8_MIN)

# The constant 1 of the MUL that requantizes a concat input onto the concat's scale: stored as
# q = 1 at scale 1, so the kernel's multiplier is exactly s_in / s_out.
REQUANT_ONE_QPARAMS = (1.0, 0)


# InstanceNorm statistics (quant/instance_norm.py) are float32 sums of integer codes, kept exact so
# that every runtime gets the same bits whatever order it sums in: a code |q - z| <= 255, a squared
# code is first split as hi * NORM_SQUARE_SPLIT + lo (both <= 255), and a row sum (< 2**24 for rows
# up to 65793 px) as hi * NORM_ROW_SPLIT + lo before the rows are summed (exact for H <= 16400 and
# H * W < 67 M px, as 1023 * H and 255 * H * W / 1024 stay below 2**24).
NORM_SQUARE_SPLIT = 2.0**8
NORM_ROW_SPLIT = 2.0**10
# The island counts pixels as sum(code * NORM_COUNT_TINY + 1): exactly 1 per pixel in float32 for any
# |code| < 2**15, yet data-dependent, so a converter that folds x * 0 cannot bake the count of the
# conversion size into a dynamic-shape artifact (litert-torch converts at one size).
NORM_COUNT_TINY = 2.0**-40


def io_scale(pixel_max: float) -> float:
    """int8 scale that maps 0..255 pixel levels losslessly at zero point ``IO_ZERO_POINT``."""
    return pixel_max / 255.0
