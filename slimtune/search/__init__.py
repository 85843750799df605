"""Search over pass options: spaces, samplers."""
