"""The training pass's eval loss on the same terms as stage perplexity (evaluate/perplexity.py): total
negative log-likelihood of every scored eval token divided by their number. transformers' Trainer reports the
mean of per-batch means instead, which weighs a token of a short batch more than one of a long batch, so
exp(eval_loss) and the evaluated perplexity of the same rows would differ by more than noise."""

from __future__ import annotations

from typing import Any


def token_weighted_trainer(base: Any) -> Any:
    """A subclass of the Trainer class `base` whose eval loss is token-weighted."""
    import torch

    class TokenWeightedTrainer(base):
        _eval_totals: list[float]

        def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
            loss, logits, labels = super().prediction_step(
                model, inputs, prediction_loss_only, ignore_keys=ignore_keys
            )
            if loss is not None and "labels" in inputs and hasattr(self, "_eval_totals"):
                shifted = inputs["shift_labels"] if "shift_labels" in inputs else inputs["labels"][..., 1:]
                scored = int(shifted.ne(-100).sum())
                self._eval_totals[0] += float(loss) * scored  # the loss is the mean over the batch's tokens
                self._eval_totals[1] += scored
            return loss, logits, labels

        def evaluation_loop(self, *args, **kwargs):
            self._eval_totals = [0.0, 0]
            output = super().evaluation_loop(*args, **kwargs)
            prefix = kwargs.get("metric_key_prefix", args[4] if len(args) > 4 else "eval")
            totals = torch.tensor(self._eval_totals, dtype=torch.float64, device=self.args.device)
            if torch.distributed.is_available() and torch.distributed.is_initialized():
                torch.distributed.all_reduce(totals)
            nll, scored = float(totals[0]), float(totals[1])
            if scored and f"{prefix}_loss" in output.metrics:
                output.metrics[f"{prefix}_loss"] = nll / scored
            del self._eval_totals
            return output

    return TokenWeightedTrainer
