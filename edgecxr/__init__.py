"""edgecxr: chest X-ray pneumonia classifier from training to embedded boards.

Three layers (see README, "What it does"):

* ``edgecxr.shared``: what both sides share (image reading, preprocessing, metrics, targets, the
  runtime registry, atomic files, errors). numpy and Pillow only.
* ``edgecxr.device``: what a board runs (bundle, backends, bench, predict, gate, report, the serial
  link and its agent). No torch. Embed it with ``from edgecxr.device.api import open_bundle``.
* ``edgecxr.host``: training, pruning, calibration, evaluation, export (torch).

``edgecxr.cli`` parses arguments and prints. import-linter enforces the layering (``make lint``).
"""

__version__ = "0.1.0"

LABELS = ("NORMAL", "PNEUMONIA")
