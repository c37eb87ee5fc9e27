"""Getting images in: finding files, decoding them robustly, and (later) datasets and feature caches."""
