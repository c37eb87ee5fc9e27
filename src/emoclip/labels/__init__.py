"""Labels: emotion taxonomies, prompt templates, and distributions over a taxonomy's levels."""
