"""quantir: train tiny image-restoration nets and ship fully-integer INT8 models that match training.

The top-level package stays import-light (no torch), so the TFLite inference path starts fast.
"""

__version__ = "0.1.0"
