"""What a search prints while it runs: one line per trial report (the trial, its parameters, the metric ASHA judges
it by, what became of it), instead of Tune's tables of every metric."""

from __future__ import annotations

from typing import Any

from ray.tune import Callback

from pipeline.search.space import SearchConfig, trial_values


class TrialLines(Callback):
    """A Tune callback: ``trial 3f2a_00001 (optim.lr=0.01) epoch 2/4: online_knn_accuracy 0.8123``, then the
    trial's end: finished with its ranked metric, stopped early, or failed."""

    def __init__(self, search: SearchConfig, epochs: int) -> None:
        self.keys, self.metric, self.early = search.varied_keys(), search.metric, search.early_stop_metric
        self.epochs = epochs  # (no printer held: Tune pickles its callbacks with the experiment's state)

    def _trial(self, trial: Any) -> str:
        values = trial_values(trial.config)
        params = ", ".join(f"{key}={values[key]}" for key in self.keys if key in values)
        return f"trial {trial.trial_id} ({params})"

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        if self.metric in result:  # the final evaluation: the end's line says it
            return
        value = result.get(self.early)
        shown = f"{self.early} {value:.4f}" if isinstance(value, (int, float)) else "no " + self.early
        print(f"{self._trial(trial)} epoch {int(result.get('epoch', 0)) + 1}/{self.epochs}: {shown}")

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        result = trial.last_result or {}
        if self.metric in result:
            print(f"{self._trial(trial)} finished: {self.metric} {result[self.metric]:.4f}")
        else:
            print(f"{self._trial(trial)} stopped early after epoch {int(result.get('epoch', 0)) + 1}")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        print(f"{self._trial(trial)} failed (its error is above; the table below marks it)")
