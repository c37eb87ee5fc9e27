"""UGRIE: generative CLIP + BART template filling, with its BART weights and templates."""
