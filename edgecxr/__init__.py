"""edgecxr: chest X-ray pneumonia classifier from training to embedded boards.

The package is split in two sides (see README):

* device side (no torch): imageio, preprocess, metrics, bundle, backends, bench,
  report, gate, link/agent.  Importable on a Raspberry Pi with numpy + a runtime.
* host side (torch): model, train, evaluate, calibrate, export, prune.
"""

__version__ = "0.1.0"

LABELS = ("NORMAL", "PNEUMONIA")
