"""The reference dental model: synthetic data, a small U-Net, training, ONNX export and evaluation.

Synthetic, not clinical. ``spec`` holds what the bundle declares (input, classes, codes) and ``data`` turns a
synthetic radiograph into the model's input and targets through the device's own preprocessing; both are numpy
only. ``network``, ``train`` and ``export`` need PyTorch (the ``train`` extra); ``evaluate`` runs the exported
bundle on ONNX Runtime.
"""
