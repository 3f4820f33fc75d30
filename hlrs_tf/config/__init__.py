"""The run configuration: typed dataclasses (no TensorFlow) and the absl flags that fill them.

- ``search``: :class:`SearchConfig`, the method presets and the value checks; ``train``: :class:`TrainConfig`.
- ``search_flags``, ``train_flags``, ``loss_flags``: the flags of the commands and their conversion to a config.
"""
