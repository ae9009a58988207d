"""On-disk data formats (filled in by the loaders work)."""
LOADERS: dict = {}
