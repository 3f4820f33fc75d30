"""Export of a retrained network to SavedModel and ONNX, with a parity check (``python -m hlrs_tf.export``).

- ``savedmodel_onnx``: the serving signature, the two exports and the parity check.
"""
