"""A metric of an installed package, registered in the `slimtune.metrics` entry-point group (for the tests)."""

from pathlib import Path


def marker_present(model, rows, marker="MARKER.txt"):
    """evaluate_func: 1.0 when the stage's folder carries the marker the plugin pass writes, else 0.0."""
    return float(Path(model.path, marker).is_file())
