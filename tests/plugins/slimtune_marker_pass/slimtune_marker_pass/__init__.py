"""CopyWithMarker: copy the input model folder and write MARKER.txt beside it (a plugin pass for the tests)."""

from pydantic import Field

from slimtune.config.base import Strict
from slimtune.passes.registry import PassSpec, register_pass


class MarkerParams(Strict):
    text: str = Field("marked", description="written into MARKER.txt")


register_pass(
    PassSpec(
        "CopyWithMarker",
        MarkerParams,
        "slimtune_marker_pass.run:run",
        version=1,
        summary="copy the model and write a marker file",
    )
)
