"""The shared layer: what both the host and a board use, with nothing heavier than numpy and Pillow.

Image reading and the one intensity convention (:mod:`.imageio`), preprocessing (:mod:`.preprocess`),
metrics (:mod:`.metrics`), dataset folders, split manifests and the stress set (:mod:`.data`,
:mod:`.stress`), target profiles (:mod:`.targets`), the runtime registry (:mod:`.runtimes`), atomic files (:mod:`.fsutil`), the one-line
errors (:mod:`.errors`), machine facts (:mod:`.sysinfo`) and plots (:mod:`.plots`, matplotlib
imported lazily). Imports neither :mod:`edgecxr.device`, :mod:`edgecxr.host` nor torch.
"""
