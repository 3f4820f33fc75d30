"""The run configuration: typed dataclasses (no TensorFlow) and the absl flags that fill them.

- ``schema``: settings (a field with its flag's help and allowed values), the flat view, the float ranges.
- ``blocks``: data, loss, weight optimiser, architecture optimiser + schedule, distribution, runtime.
- ``search``: :class:`SearchConfig` and the method presets; ``train``: :class:`TrainConfig`; ``post_hoc``.
- ``flags``: the absl flags of the commands, generated from the fields, and their conversion to a config.
"""
