"""Which linear layers a LoRA adapts: names written for one architecture work on another.

Phi-3 fuses attention and MLP projections (`qkv_proj`, `gate_up_proj`); Llama-style models (Llama, Qwen2,
Mistral, SmolLM) split them (`q_proj`/`k_proj`/`v_proj`, `gate_proj`/`up_proj`).
"""

from __future__ import annotations

from slimtune.errors import UserError

# name -> names that cover the same weights on the other family
_ALIASES: dict[str, tuple[str, ...]] = {
    "qkv_proj": ("q_proj", "k_proj", "v_proj"),
    "q_proj": ("qkv_proj",),
    "k_proj": ("qkv_proj",),
    "v_proj": ("qkv_proj",),
    "gate_up_proj": ("gate_proj", "up_proj"),
    "gate_proj": ("gate_up_proj",),
    "up_proj": ("gate_up_proj",),
    "dense": ("o_proj",),
    "o_proj": ("dense",),
}
ALL_LINEAR = "all-linear"


def resolve_target_modules(
    requested: list[str] | str | None, linear_names: list[str]
) -> tuple[list[str] | str, list[str]]:
    """(names to give peft, notes on each mapping). `linear_names` are the model's linear layer leaf names."""
    if requested is None or requested == ALL_LINEAR:
        return ALL_LINEAR, []
    names = [requested] if isinstance(requested, str) else list(requested)
    available = set(linear_names)
    resolved: list[str] = []
    notes: list[str] = []
    missing: list[str] = []
    for name in names:
        if name in available:
            resolved.append(name)
            continue
        mapped = [alias for alias in _ALIASES.get(name, ()) if alias in available]
        if mapped:
            resolved.extend(mapped)
            notes.append(f"target module `{name}` is not in this model; using {', '.join(mapped)}")
        else:
            missing.append(name)
    if missing:
        raise UserError(
            f"target_modules {missing} match no linear layer of this model. Its linear layers are: "
            f"{', '.join(sorted(available))}. Use some of these, or leave target_modules out to adapt all."
        )
    return list(dict.fromkeys(resolved)), notes
