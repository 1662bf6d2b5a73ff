"""The board in the clinic: ``edgecxr serve`` receives X-rays over DICOM and returns a TID 1500 SR.

Device side (no torch): pynetdicom, highdicom, pydicom and the pylibjpeg decoders (the ``serve``
extra), on top of :class:`edgecxr.device.api.Model`, the one inference path.

    receiver (C-STORE, C-ECHO) -> spool (fsync before the ack) -> worker (intake rules, bundle, SR)
        -> results log (JSON lines, UIDs only) and outbox (C-STORE to the PACS, retried from disk)

Modules: :mod:`.config` (settings, TOML), :mod:`.spool`, :mod:`.receiver`, :mod:`.worker`,
:mod:`.sr`, :mod:`.outbox`, :mod:`.node` (startup, trust, signals).
"""
