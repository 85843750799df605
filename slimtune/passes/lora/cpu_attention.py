"""Causal attention for training on the CPU in bf16: blocks of queries, plain batched products.

PyTorch's CPU flash-attention kernel (what sdpa runs for bf16 on a CPU) reaches about 100 GFLOP/s on this
project's 2-core AMD EPYC (AVX-512 BF16, no AMX), where the same CPU's bf16 matrix products reach about
390: for SmolLM2-135M on the source document's 1024-token blocks, attention was 1.2 s of a 3.4 s forward and
backward (0.36 s forward, 0.85 s backward). This version cuts the queries into blocks of `BLOCK` rows;
block i attends to keys 0 .. its own last position with two batched products and a float32 softmax, so the
causal half of the scores is skipped as flash attention skips it, and each block's scores stay in the cache.
The probabilities (bf16) are kept for the backward, which then needs four products per block and no
recomputation. Measured on one layer's shapes (9 query heads, 3 key/value heads, 1024 x 64): 41 ms
forward + backward with sdpa, about 25 ms with this.

The cost is memory: the kept probabilities are about half a T x T matrix per query head and layer (9.4 MB
per layer for SmolLM2-135M at 1024 tokens, 0.3 GB for its 30 layers). Calls whose probabilities would pass
`MAX_KEPT_BYTES` go to sdpa, as do calls this does not cover: an explicit mask (padding, packed rows),
attention dropout, a sliding window shorter than the sequence, sinks, inputs other than bf16, and calls
without gradients (evaluation).

`block_attention()` is a TrainerCallback that installs this in place of transformers' "sdpa" attention
function while training runs and puts the original back after, so nothing is saved with the model and
the model's mask handling stays sdpa's.
"""

from __future__ import annotations

from functools import cache
from typing import Any

BLOCK = 128  # query rows per block: 64-192 measured within noise of each other, 512 slower than sdpa
MAX_KEPT_BYTES = 64 * 2**20  # per call (one layer)


def kept_bytes(batch: int, heads: int, length: int) -> int:
    """Bytes of bf16 probabilities one call keeps for its backward."""
    blocks = -(-length // BLOCK)
    rows_times_keys = sum(
        min(BLOCK, length - i * BLOCK) * min((i + 1) * BLOCK, length) for i in range(blocks)
    )
    return 2 * batch * heads * rows_times_keys


@cache  # torch is imported lazily, so the Function is made on first use
def _function():
    import torch

    class CausalBlockAttention(torch.autograd.Function):
        """softmax(q k^T * scale, causal) v for q (b, hq, T, d) and k, v (b, hk, T, d), hq a multiple of hk."""

        @staticmethod
        def forward(ctx, q, k, v, scale: float):
            b, hq, length, d = q.shape
            hk = k.shape[1]
            groups = b * hk
            per = hq // hk  # query heads that share one key/value head: they share the products too
            qg = q.reshape(groups, per, length, d)
            keys32 = k.reshape(
                groups, length, d
            ).float()  # float32 scores, as flash attention accumulates them
            values = v.reshape(groups, length, d)
            out = torch.empty(groups, per, length, d, dtype=q.dtype)
            above = torch.ones(BLOCK, BLOCK, dtype=torch.bool).triu_(1)
            kept = []
            with torch.autocast("cpu", enabled=False):
                for start in range(0, length, BLOCK):
                    end = min(start + BLOCK, length)
                    n = end - start
                    rows = qg[:, :, start:end].reshape(groups, per * n, d).float()
                    scores = torch.bmm(rows, keys32[:, :end].transpose(1, 2)).view(groups, per, n, end)
                    scores[..., start:end].masked_fill_(above[:n, :n], float("-inf"))
                    probs = torch.softmax(scores.mul_(scale), dim=-1).to(q.dtype).view(groups, per * n, end)
                    out[:, :, start:end] = torch.bmm(probs, values[:, :end]).view(groups, per, n, d)
                    kept.append(probs)
            out = out.view(b, hq, length, d)
            ctx.save_for_backward(q, k, v, out, *kept)
            ctx.scale = scale
            return out

        @staticmethod
        def backward(ctx, grad_out):
            q, k, v, out, *kept = ctx.saved_tensors
            b, hq, length, d = q.shape
            hk = k.shape[1]
            groups = b * hk
            per = hq // hk
            qg = q.reshape(groups, per, length, d)
            keys = k.reshape(groups, length, d)
            values = v.reshape(groups, length, d)
            grad_out = grad_out.reshape(groups, per, length, d)
            # rowsum(dO * O): the softmax backward's correction term, for all rows at once
            correction = (grad_out.float() * out.reshape(groups, per, length, d).float()).sum(
                -1, keepdim=True
            )
            grad_q = torch.empty(groups, per, length, d, dtype=q.dtype)
            grad_k = torch.zeros(groups, length, d, dtype=torch.float32)
            grad_v = torch.zeros(groups, length, d, dtype=torch.float32)
            with torch.autocast("cpu", enabled=False):
                for i, start in enumerate(range(0, length, BLOCK)):
                    end = min(start + BLOCK, length)
                    n = end - start
                    probs = kept[i]
                    rows_grad = grad_out[:, :, start:end].reshape(groups, per * n, d)
                    rows = qg[:, :, start:end].reshape(groups, per * n, d)
                    grad_v[:, :end] += torch.bmm(probs.transpose(1, 2), rows_grad)
                    grad_probs = torch.bmm(rows_grad, values[:, :end].transpose(1, 2)).float()
                    shift = correction[:, :, start:end].reshape(groups, per * n, 1)
                    grad_scores = (probs.float() * grad_probs.sub_(shift)).mul_(ctx.scale).to(q.dtype)
                    grad_q[:, :, start:end] = torch.bmm(grad_scores, keys[:, :end]).view(groups, per, n, d)
                    grad_k[:, :end] += torch.bmm(grad_scores.transpose(1, 2), rows)
            return (
                grad_q.view(b, hq, length, d),
                grad_k.view(b, hk, length, d).to(k.dtype),
                grad_v.view(b, hk, length, d).to(v.dtype),
                None,
            )

    return CausalBlockAttention


def causal_block_attention(q, k, v, scale: float):
    """Causal attention of q (b, hq, T, d) over k, v (b, hk, T, d), bf16 on the CPU; output like q."""
    return _function().apply(q, k, v, scale)


def covers(query, key, value, attention_mask, dropout: float, kwargs: dict[str, Any]) -> bool:
    """Whether a call of transformers' sdpa attention function is one this computes the same way."""
    import torch

    length = query.shape[2]
    window = kwargs.get("sliding_window")
    return (
        torch.is_grad_enabled()
        and query.requires_grad
        and query.device.type == "cpu"
        and query.dtype == key.dtype == value.dtype == torch.bfloat16
        and attention_mask is None
        and kwargs.get("is_causal", True) is not False
        and not dropout
        and kwargs.get("s_aux") is None
        and kwargs.get("position_bias") is None
        and (window is None or window >= length)
        and length > 1
        and key.shape[2] == length
        and key.shape[-1] == value.shape[-1] == query.shape[-1]
        and query.shape[1] % key.shape[1] == 0
        and kept_bytes(query.shape[0], query.shape[1], length) <= MAX_KEPT_BYTES
    )


def _attention_function(sdpa):
    """transformers' attention-function signature around `causal_block_attention`, sdpa for the rest."""

    def attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
        if not getattr(module, "is_causal", True) or not covers(
            query, key, value, attention_mask, dropout, kwargs
        ):
            return sdpa(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
        scale = scaling if scaling is not None else query.shape[-1] ** -0.5
        out = causal_block_attention(query, key, value, scale)
        return out.transpose(1, 2).contiguous(), None

    attention.slimtune_block_attention = True
    return attention


def block_attention():
    """A TrainerCallback that puts `causal_block_attention` in place of transformers' sdpa attention function
    while training runs, and the original back after."""
    from transformers import TrainerCallback
    from transformers.modeling_utils import AttentionInterface

    class BlockAttention(TrainerCallback):
        before: Any = None

        def on_train_begin(self, args, state, control, **kwargs):
            current = AttentionInterface._global_mapping["sdpa"]
            if not getattr(current, "slimtune_block_attention", False):
                self.before = current
                AttentionInterface._global_mapping["sdpa"] = _attention_function(current)

        def on_train_end(self, args, state, control, **kwargs):
            if self.before is not None:
                AttentionInterface._global_mapping["sdpa"] = self.before
                self.before = None

    return BlockAttention()
