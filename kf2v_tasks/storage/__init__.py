"""fsspec I/O: paths, atomic writes, resumable downloads, storage options. Knows nothing of DashScope."""
