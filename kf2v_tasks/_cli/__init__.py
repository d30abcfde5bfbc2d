"""The ``kf2v`` command line."""
