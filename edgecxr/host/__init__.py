"""The host side: training, pruning, calibration sets, evaluation and export (torch lives here).

:mod:`.train` and :mod:`.prune` make checkpoints, :mod:`.model` reads and writes them,
:mod:`.calibrate` makes calibration sets, :mod:`.evaluate` scores a checkpoint, :mod:`.export`
converts it into a bundle per target with the converter named in the runtime registry,
:mod:`.torchref` runs the PyTorch float reference through the bench runner, and :mod:`.workflows`
chains them (`pipeline`, `demo`). May import :mod:`edgecxr.device` and :mod:`edgecxr.shared`.
"""
