"""Early stopping: end a run after `patience` epochs without a better validation accuracy, and keep the
weights of its best epoch.

    stopper = EarlyStopping(patience=5, last_epoch=20)
    for record, params in epochs:                  # record: MLP's epoch record, params: the epoch's Layers
        params = stopper.after_epoch(record, params)   # the best epoch's, once the run ends
        if stopper.done: break
"""


class EarlyStopping:
    """Watches one run's epoch records (dicts with "epoch" and "val_accuracy"); `best` holds the
    parameters of the run's best epoch so far (the first, on ties) while the run goes on, None after."""

    def __init__(self, patience, last_epoch, records=(), best=None):
        """patience: epochs without a better validation accuracy before stopping; last_epoch: the number
        of the run's last epoch. A resumed run passes the records of its epochs so far and the best
        parameters among them (RunState.best)."""
        self.patience, self.last_epoch = patience, last_epoch
        self.best_record, self.best, self.done = None, best, False
        for record in records:
            if self._better(record):
                self.best_record = record

    def _better(self, record):
        """Whether record's validation accuracy beats the best so far (the first keeps a tie)."""
        return self.best_record is None or record["val_accuracy"] > self.best_record["val_accuracy"]

    def after_epoch(self, record, params):
        """The parameters to keep after the epoch of `record`: params, or once the run ends (stopped, or
        its last epoch) the best epoch's, and then record["early_stopping"] says what happened."""
        if self._better(record):
            self.best_record, self.best = record, params
        stopped = record["epoch"] - self.best_record["epoch"] >= self.patience
        if not (stopped or record["epoch"] == self.last_epoch):
            return params
        record["early_stopping"] = self._note(record["epoch"], stopped)
        params, self.best, self.done = self.best, None, True
        return params

    def _note(self, last, stopped):
        """What early stopping did, for the run's last record."""
        best, val = self.best_record["epoch"], self.best_record["val_accuracy"]
        reason = (f"no validation accuracy above {val:.2%} (epoch {best}) for {self.patience} epochs: "
                  f"stopped after epoch {last} of {self.last_epoch}" if stopped
                  else f"ran every epoch; the best validation accuracy was {val:.2%}, at epoch {best}")
        return {"stopped": stopped, "best_epoch": best, "best_val_accuracy": val,
                "reason": f"{reason}; kept the weights of epoch {best}"}
