"""The device side: everything a board runs, without torch and without the host side.

A bundle (:mod:`.bundle`), its runtime (:mod:`.backends`: one registry entry per runtime), the one
benchmark runner (:mod:`.bench`), readings (:mod:`.predict`), paired int8-versus-float comparison
(:mod:`.paired`), the accuracy gate (:mod:`.gate`), reports (:mod:`.report`) and the serial link with
the board's agent (:mod:`.link`). Imports :mod:`edgecxr.shared` only.
"""
