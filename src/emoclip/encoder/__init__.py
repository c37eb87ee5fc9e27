"""Encode: CLIP backbone, weights, the encoder spec, precision, decoding, the feature pipeline and cache."""
