import numpy as np

from quantir.export.tflite_graph import depth_to_space_dcr


def test_dcr_depth_to_space_reference_matches_torch_layer():
    import torch

    from quantir.models.layers import depth_to_space

    x = np.arange(2 * 4 * 5 * 18, dtype=np.float32).reshape(2, 4, 5, 18)
    ours = depth_to_space_dcr(x, 3)
    ref = depth_to_space(torch.from_numpy(x).permute(0, 3, 1, 2), 3).permute(0, 2, 3, 1).numpy()
    assert np.array_equal(ours, ref)
