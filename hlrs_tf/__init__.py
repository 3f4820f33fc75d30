"""hlrs_tf: DARTS + BBN + HLRS neural architecture search on long-tailed data (Keras 3 / TensorFlow)."""

__version__ = "0.1.0"
