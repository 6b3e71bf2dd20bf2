"""Reading a run's history: is it overfitting, and what would help.

Overfitting is reported when, after the epoch with the lowest validation loss,
validation loss rose for `RISING_EPOCHS` epochs or more while training loss kept
falling, or when the final validation loss is more than `GAP_RATIO` above the
training loss and no longer at its best.
"""

from __future__ import annotations

RISING_EPOCHS = 2
MIN_EPOCHS = 3  # fewer epochs than this get no overfitting report
GAP_RATIO = 0.3
GENERAL_FIXES = ("more data", "early stopping (train.early_stopping_patience) keeps the best epoch")


def overfitting(history: dict, fixes: tuple = (), kept_epoch: int | None = None, rising_epochs: int = RISING_EPOCHS,
                gap_ratio: float = GAP_RATIO) -> dict | None:
    """`{"reason", "best_epoch", "kept_epoch", "fixes"}` when the history shows overfitting, else None. `best_epoch` is
    the epoch of the lowest validation loss (what the reason reads); `kept_epoch` is the epoch whose weights the saved
    model holds, as the trainer chose it (by `train.monitor`, which may be an accuracy; default: `best_epoch`)."""
    train, val = history.get("loss", []), history.get("val_loss", [])
    if len(val) < MIN_EPOCHS or len(train) != len(val):  # two epochs say too little to call it (a smoke-test run)
        return None
    best = min(range(len(val)), key=val.__getitem__)
    after = range(best + 1, len(val))
    reason = None
    rising = sum(1 for i in after if val[i] > val[i - 1] and train[i] < train[i - 1])
    if rising >= rising_epochs:
        reason = (f"validation loss rose in {rising} of the {len(after)} epochs after epoch {best + 1} "
                  f"({val[best]:.4f} → {val[-1]:.4f}) while training loss fell ({train[best]:.4f} → {train[-1]:.4f})")
    elif best < len(val) - 1 and val[-1] > train[-1] * (1 + gap_ratio):
        reason = (f"the final validation loss {val[-1]:.4f} is {val[-1] / max(train[-1], 1e-12) - 1:.0%} above the "
                  f"training loss {train[-1]:.4f}, and its best was at epoch {best + 1}")
    if reason is None:
        return None
    return {"reason": reason, "best_epoch": best + 1, "kept_epoch": kept_epoch or best + 1, "fixes": list(fixes or GENERAL_FIXES)}
