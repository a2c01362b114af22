import numpy as np

from quantir.export.tflite_graph import depth_to_space_dcr


def test_dcr_depth_to_space_reference_matches_torch_layer():
    import torch

    from quantir.models.layers import depth_to_space

    x = np.arange(2 * 4 * 5 * 18, dtype=np.float32).reshape(2, 4, 5, 18)
    ours = depth_to_space_dcr(x, 3)
    ref = depth_to_space(torch.from_numpy(x).permute(0, 3, 1, 2), 3).permute(0, 2, 3, 1).numpy()
    assert np.array_equal(ours, ref)


def test_slice_bounds_count_from_the_nearer_end():
    from quantir.export.tflite_graph import _relative_bounds

    assert _relative_bounds(0, 64, 64) == (0, 0, True, True)  # the whole axis: both masks
    assert _relative_bounds(0, -1, 64) == (0, 0, True, True)
    assert _relative_bounds(1, 1, 64) == (1, 2, False, False)  # a mirror pad's head column
    assert _relative_bounds(63, 1, 64) == (-1, 0, False, True)  # the last column: to the end at any size
    assert _relative_bounds(62, 1, 64) == (-2, -1, False, False)
    assert _relative_bounds(20, 30, 64) is None  # across the middle: no size-free reading
