"""The process and run machinery.

- ``workdir``: work directories (file names, state, atomic writes, the lock, resume checks).
- ``run``: the run skeleton (a ``Task`` and ``drive``) that the search and the retraining fill in; ``callbacks``:
  the callbacks every run uses (epoch schedules, checkpoint, history, TensorBoard).
- ``cli``: process settings and the commands' shared helpers.
- ``devices``: devices and the TensorFlow install check; ``distribute``: MirroredStrategy and multi-worker;
  ``sync_bn``: synchronised BatchNorm; ``precision``: mixed precision.
- ``diagrams``: the cell diagrams of a genotype (``normal.png``, ``reduce.png``).
"""
