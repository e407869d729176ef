"""Where session and retained state outlives a process: the store interface
(``base.py``), the one versioned serialisation (``codec.py``) used by the
stores, the snapshot file and the hand-over between workers, and the stores
themselves (``snapshot.py`` for ``memory`` with ``persistence_file``)."""
