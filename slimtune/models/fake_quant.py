"""Fake quantization of a model's frozen base weights onto the int4 grid ONNX Runtime will use.

The ONNX Runtime GenAI model builder quantizes with onnxruntime's MatMulNBitsQuantizer (DEFAULT algorithm,
MLAS `MlasQuantizeBlockwise`). In its symmetric int4 form (the builder's default) each block of `block_size`
consecutive values along a Linear weight's input dimension (the MatMul's K axis) gets

    m     = the value with the largest magnitude (the negative one on a tie)
    scale = m / -8
    q     = clamp(roundf(w / scale + 8), 0, 15) - 8        (roundf: half away from zero, on w/scale + 8 >= 0)
    w'    = q * scale

so the block's largest-magnitude value lands exactly on -8. `w / scale` is computed, as in MLAS, as
`w * (1 / scale)`. A block shorter than `block_size` (K not a multiple) is padded with zeros, which do not
change m. tests/test_fake_quant.py checks this against onnxruntime's own quantizer.

LoRA trains only the adapter; the base weights are frozen. Replacing them once, before training, by their
quantize-dequantize image makes the adapter learn on exactly the weights the int4 model will have, so an
adapter exported unmerged next to the int4 base (ModelBuilder with an adapter input) keeps its accuracy.
"""

from __future__ import annotations

from typing import Any

INT4_MIN, INT4_MAX, INT4_MID = -8, 7, 8


def fake_quantize_int4(weight: Any, block_size: int = 32) -> Any:
    """Quantize-dequantize a [out, in] weight blockwise along `in` (symmetric int4, MLAS rounding).

    Returns a new float32 tensor of the same shape; computation is in float32 like onnxruntime's quantizer.
    """
    import torch

    if weight.dim() != 2:
        raise ValueError(f"expected a 2-D [out, in] weight, got shape {tuple(weight.shape)}")
    if block_size < 16 or block_size & (block_size - 1):
        raise ValueError(
            f"block_size must be a power of two >= 16 (what MatMulNBits accepts), got {block_size}"
        )
    w = weight.detach().to(torch.float32)
    rows, cols = w.shape
    pad = (-cols) % block_size
    if pad:
        w = torch.nn.functional.pad(w, (0, pad))
    blocks = w.reshape(rows, -1, block_size)
    high = blocks.amax(dim=-1, keepdim=True)
    low = blocks.amin(dim=-1, keepdim=True)
    m = torch.where(high.abs() > low.abs(), high, low)
    scale = m / float(-INT4_MID)
    reciprocal = torch.where(scale != 0, 1.0 / scale, torch.zeros_like(scale))
    shifted = blocks * reciprocal + float(INT4_MID)  # >= 0 up to rounding; roundf == floor(x + 0.5) there
    q = torch.clamp(torch.floor(shifted + 0.5), 0, 2 * INT4_MID - 1) - INT4_MID
    out = (q * scale).reshape(rows, -1)[:, :cols]
    return out.contiguous()


def fake_quantize_model_int4(model: Any, block_size: int = 32, *, include_lm_head: bool = True) -> list[str]:
    """Replace, in place, every nn.Linear weight of `model` by its int4 quantize-dequantize image.

    These are the layers the builder turns into quantized MatMuls (op_types_to_quantize MatMul, its default):
    every projection of the decoder and the output head. The input embeddings follow the builder too: a head
    tied to the embeddings (SmolLM2, Qwen2.5-0.5B ...) is exported as one int4 matrix that both the lm_head
    MatMulNBits and a GatherBlockQuantized embedding read (the builder's shared_embeddings default), so the
    tied weight is quantized once, for both; an untied embedding stays float, as the builder leaves it.
    `include_lm_head=False` leaves the head (and a tied embedding) alone.
    Returns the names of the layers changed.
    """
    import torch

    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    changed = []
    with torch.no_grad():
        for name, module in model.named_modules():
            if not isinstance(module, torch.nn.Linear):
                continue
            if module is head and not include_lm_head:
                continue
            quantized = fake_quantize_int4(module.weight, block_size).to(module.weight.dtype)
            module.weight.copy_(quantized)  # in place: a tied embedding gets the same values
            changed.append(name)
    return changed
