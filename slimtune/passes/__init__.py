from slimtune.passes.registry import PassSpec, all_passes, get_pass, register_pass

__all__ = ["PassSpec", "all_passes", "get_pass", "register_pass"]
