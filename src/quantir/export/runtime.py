"""Run .tflite / .onnx artifacts on uint8 RGB images of any size. Never imports torch.

Each artifact carries a ``quantir`` metadata record (task, scale, pixel range, size multiple)
and its own input/output quantization; the wrappers quantize uint8 pixels with the model's
input scale/zero point, dequantize its output, pad to the size multiple and crop back, and
run fixed-shape models through the tiling utility.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from quantir.data.task import ModelInfo
from quantir.data.tiling import TileCut, exact_overlap, tiled_apply
from quantir.errors import ConfigError, ModelFileError
from quantir.export.receptive_field import tflite_radius
from quantir.utils import silence_stderr

SUFFIXES = (".tflite", ".onnx")


_BYTES = np.arange(256, dtype=np.uint8)


def _lookup(table: np.ndarray, codes: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """``table[codes]`` for uint8 ``codes``, into ``out`` (of the table's dtype) if given. quantir's
    artifacts map pixels to int8 by q = p - 128 (scale 1 on 0..255, zero point -128), a flip of the
    top bit: done as a XOR (60x faster than the gather on a 1.4-MP output tile), the same bytes; any
    other table is gathered."""
    if table.dtype.itemsize == 1:
        raw = table.view(np.uint8)
        if np.array_equal(raw, _BYTES ^ 0x80):
            if out is None:
                return np.bitwise_xor(codes, 0x80).view(table.dtype)
            np.bitwise_xor(codes, 0x80, out=out.view(np.uint8))
            return out
        if np.array_equal(raw, _BYTES):
            if out is None:
                return codes.view(table.dtype).copy()
            np.copyto(out, codes.view(table.dtype))
            return out
    if out is None:
        return np.take(table, codes)
    return np.take(table, codes, out=out, mode="clip")  # codes are 0..255, the table's length: no clipping


def _check_pixels(img: np.ndarray) -> None:
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"expected uint8 HxWx3, got {img.dtype} {img.shape}")


def quantize_input(pixels: np.ndarray, pixel_max: float, dtype, scale, zero_point) -> np.ndarray:
    x = pixels.astype(np.float32) * (pixel_max / 255.0)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return np.clip(np.round(x / scale) + zero_point, info.min, info.max).astype(dtype)
    return x.astype(dtype)


def _dequantize(y: np.ndarray, pixel_max: float, scale, zero_point) -> np.ndarray:
    if np.issubdtype(y.dtype, np.integer):
        y = (y.astype(np.float32) - zero_point) * scale
    return np.clip(np.round(y.astype(np.float32) * (255.0 / pixel_max)), 0, 255).astype(np.uint8)


class Runtime:
    """Common logic: metadata checks, padding to the size multiple, fixed-shape tiling."""

    backend = "?"

    def __init__(self, path: Path, meta: dict):
        self.path, self.meta = path, meta
        try:
            self.info = ModelInfo.from_meta(meta)
        except (ValueError, TypeError, ConfigError) as err:
            raise ModelFileError(f"{path}: bad quantir metadata ({err})") from None
        self.task, self.scale = self.info.task, self.info.scale
        self.pixel_max, self.multiple = self.info.pixel_max, self.info.size_multiple
        self._in_lut: np.ndarray | None = None  # uint8 pixel -> input tensor value, built on first use
        self._out_lut: np.ndarray | None = None  # 8-bit output level -> uint8 pixel

    def check(self, task: str | None = None, scale: int | None = None) -> None:
        self.info.check(task, scale, what=self.path.name)

    # subclasses: fixed_hw (None if dynamic), invoke(int8/float NHWC batch) -> NHWC output, io
    fixed_hw: tuple[int, int] | None = None
    # receptive-field radius of the output in input px, read from the graph (None: not derivable)
    radius: int | None = None

    def quantize(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 NHWC pixels -> the artifact's input tensor (its dtype, scale and zero point).

        A uint8 input has 256 possible values, so the float formula runs once per value and the
        pixels are looked up: the same numbers, without float passes over every tile.
        """
        if pixels.dtype == np.uint8:
            if self._in_lut is None:
                self._in_lut = quantize_input(np.arange(256, dtype=np.uint8), self.pixel_max, self.in_dtype,
                                              self.in_scale, self.in_zp)
            return _lookup(self._in_lut, pixels)
        return quantize_input(pixels, self.pixel_max, self.in_dtype, self.in_scale, self.in_zp)

    def _output_table(self, dtype) -> np.ndarray:
        """uint8 pixel of each 8-bit output level, indexed by the output's bytes (int8 -1 is byte 255)."""
        if self._out_lut is None:
            self._out_lut = _dequantize(np.arange(256, dtype=np.uint8).view(dtype), self.pixel_max,
                                        self.out_scale, self.out_zp)
        return self._out_lut

    def dequantize(self, y: np.ndarray) -> np.ndarray:
        """The artifact's output tensor -> uint8 pixels (an 8-bit output through a 256-entry table)."""
        if y.dtype in (np.int8, np.uint8):
            return _lookup(self._output_table(y.dtype), y.view(np.uint8))
        return _dequantize(y, self.pixel_max, self.out_scale, self.out_zp)

    def _invoke_padded(self, img: np.ndarray, target_hw: tuple[int, int]) -> np.ndarray:
        """The output tensor for ``img`` edge-padded to ``target_hw``, cropped back to ``img``'s size
        x scale; it may be the runtime's own buffer, valid until the next invoke."""
        h, w = img.shape[:2]
        th, tw = target_hw
        if (th, tw) != (h, w):
            img = np.pad(img, ((0, th - h), (0, tw - w), (0, 0)), mode="edge")
        return self._invoke_transient(self.quantize(img[None]))[0][: h * self.scale, : w * self.scale]

    def _run_padded(self, img: np.ndarray, target_hw: tuple[int, int]) -> np.ndarray:
        return self.dequantize(self._invoke_padded(img, target_hw))  # a new array: the output may be reused

    def _invoke_transient(self, x: np.ndarray) -> np.ndarray:
        """``invoke`` for a caller that is done with the output before the next call (it may be the
        runtime's own buffer)."""
        return self.invoke(x)

    def prepare(self, h: int, w: int) -> None:
        """Get ready for h x w uint8 inputs to :meth:`run` before the first one arrives (the photo
        path calls it while the photo decodes). Nothing to do for runtimes without per-shape buffers."""

    def invoke_hw(self, h: int, w: int) -> tuple[int, int]:
        """The input size :meth:`run` invokes for an h x w image: padded to the size multiple, or the
        fixed shape it is tiled into."""
        if self.fixed_hw is not None:
            return self.fixed_hw
        m = self.multiple
        return h + (-h) % m, w + (-w) % m

    def run(self, img: np.ndarray) -> np.ndarray:
        """uint8 HxWx3 -> uint8 (sH)x(sW)x3."""
        _check_pixels(img)
        if self.fixed_hw is None:
            return self._run_padded(img, self.invoke_hw(*img.shape[:2]))
        fh, fw = self.fixed_hw
        if img.shape[0] <= fh and img.shape[1] <= fw:
            return self._run_padded(img, (fh, fw))
        overlap, margin = exact_overlap(self.radius, min(32, fh // 4, fw // 4), None)
        return tiled_apply(img, lambda t: self._run_padded(t, (fh, fw)), scale=self.scale, tile=(fh, fw),
                           overlap=overlap, margin=margin)

    def run_into(self, img: np.ndarray, cut: TileCut) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`run` as a photo-path tile worker (``tiling.TileIntoFn``): the output's weight-one core
        is dequantized straight into the band, from the runtime's own output buffer, so no tile-sized
        array is made and copied again by the stitching thread; the strip pixels are returned."""
        h, w = img.shape[:2]
        if self.fixed_hw is not None and (h > self.fixed_hw[0] or w > self.fixed_hw[1]):
            return cut.write(self.run(img))  # tiled inside: its output is a new array anyway
        _check_pixels(img)
        y = self._invoke_padded(img, self.invoke_hw(h, w))
        if y.dtype not in (np.int8, np.uint8):
            return cut.write(self.dequantize(y))
        table, codes = self._output_table(y.dtype), y.view(np.uint8)
        _lookup(table, codes[cut.rows, cut.cols], out=cut.dest(table.dtype, codes.shape[2]))
        return _lookup(table, codes[cut.strip_rows]), _lookup(table, codes[:, cut.strip_cols])


class TFLiteRuntime(Runtime):
    backend = "tflite"

    def __init__(self, path: Path, threads: int = 2):
        data = path.read_bytes()
        meta = read_tflite_metadata(data, path)
        super().__init__(path, meta)
        from ai_edge_litert.interpreter import Interpreter

        try:
            with silence_stderr():  # the runtime logs "Created TensorFlow Lite XNNPACK delegate" on stderr
                self.interpreter = Interpreter(model_content=data, num_threads=threads)
        except (ValueError, RuntimeError) as err:
            raise ModelFileError(f"{path}: not a valid TFLite model ({str(err).splitlines()[0]})") from None
        inp = self.interpreter.get_input_details()[0]
        out = self.interpreter.get_output_details()[0]
        self.in_index, self.out_index = inp["index"], out["index"]
        self.in_dtype, self.out_dtype = inp["dtype"], out["dtype"]
        self.in_scale, self.in_zp = inp["quantization"]
        self.out_scale, self.out_zp = out["quantization"]
        sig = list(inp.get("shape_signature", inp["shape"]))
        self.fixed_hw = None if (sig[1] == -1 or sig[2] == -1) else (int(sig[1]), int(sig[2]))
        self.in_channels = int(sig[3])
        self.radius = tflite_radius(data)
        self._shape = None

    def invoke(self, x: np.ndarray) -> np.ndarray:
        self._invoke_in_place(x)
        return self.interpreter.get_tensor(self.out_index)

    def _invoke_transient(self, x: np.ndarray) -> np.ndarray:
        # The interpreter's output buffer itself, valid until its next invoke: the photo path
        # dequantizes it into a new array at once, so get_tensor's copy of every tile is skipped.
        self._invoke_in_place(x)
        return self.interpreter.tensor(self.out_index)()

    def prepare(self, h: int, w: int) -> None:
        # allocate_tensors holds the GIL for its whole run (0.12 s for a 632x696 enhancer tile, mostly
        # page faults), so a caller can do it while other threads are in C.
        self._allocate((1, *self.invoke_hw(h, w), self.in_channels))

    def _allocate(self, shape: tuple[int, ...]) -> None:
        if self._shape != shape:
            with silence_stderr():
                if self.fixed_hw is None:
                    self.interpreter.resize_tensor_input(self.in_index, list(shape))
                self.interpreter.allocate_tensors()
            self._shape = shape

    def _invoke_in_place(self, x: np.ndarray) -> None:
        self._allocate(x.shape)
        self.interpreter.set_tensor(self.in_index, x)
        self.interpreter.invoke()


class ONNXRuntime(Runtime):
    backend = "onnx"

    def __init__(self, path: Path, threads: int = 2):
        try:
            import onnxruntime as ort
        except ImportError:
            raise ModelFileError("running .onnx models needs onnxruntime (pip install 'quantir[export]')") from None
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        so.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        except Exception as err:  # onnxruntime raises its own exception types
            raise ModelFileError(f"{path}: not a valid ONNX model ({str(err).splitlines()[0][:200]})") from None
        raw = self.session.get_modelmeta().custom_metadata_map.get("quantir")
        if raw is None:
            raise ModelFileError(f"{path}: no quantir metadata (was it exported by 'quantir export'?)")
        meta = json.loads(raw)
        super().__init__(path, meta)
        io = meta["io"]
        self.in_scale, self.in_zp = io["input_scale"], io["input_zero_point"]
        self.out_scale, self.out_zp = io["output_scale"], io["output_zero_point"]
        inp = self.session.get_inputs()[0]
        self.in_name = inp.name
        self.in_dtype = np.int8 if "int8" in inp.type else np.float32
        dims = inp.shape
        self.fixed_hw = (int(dims[1]), int(dims[2])) if all(isinstance(d, int) for d in dims[1:3]) else None

    def invoke(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.in_name: x})[0]


def read_tflite_metadata(data: bytes, path: Path) -> dict:
    """The ``quantir`` metadata record of a .tflite file, read with the flatbuffer schema only."""
    from ai_edge_litert import schema_py_generated as fb

    if len(data) < 8 or data[4:8] != b"TFL3":
        raise ModelFileError(f"{path}: not a TFLite model (bad file identifier)")
    try:
        model = fb.Model.GetRootAs(data, 0)
        for i in range(model.MetadataLength()):
            entry = model.Metadata(i)
            if entry.Name() == b"quantir":
                buf = model.Buffers(entry.Buffer())
                return json.loads(bytes(buf.DataAsNumpy()).decode())
    except Exception as err:
        raise ModelFileError(f"{path}: corrupt TFLite model ({type(err).__name__})") from None
    raise ModelFileError(f"{path}: no quantir metadata (was it exported by 'quantir export'?)")


def load_runtime(path: str | Path, threads: int = 2) -> Runtime:
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path}: model file not found")
    if path.stat().st_size == 0:
        raise ModelFileError(f"{path}: model file is empty")
    kinds = dict(zip(SUFFIXES, (TFLiteRuntime, ONNXRuntime)))
    cls = kinds.get(path.suffix.lower())
    if cls is None:
        raise ModelFileError(f"{path}: unknown model format (expected .tflite or .onnx)")
    return cls(path, threads=threads)
