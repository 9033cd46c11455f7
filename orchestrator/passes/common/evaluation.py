"""The model's own metric on its evaluation data, for passes that control accuracy.

A build hands passes an :class:`Evaluation` as ``PassContext.evaluate``: calling it
with a predict function (one sample's inputs -> the outputs in graph order)
returns the model's metric on the evaluation data, higher is better:

- classification: top-1 accuracy against the labels (agreement with the reference
  model's predictions when the data has no labels);
- segmentation: mean foreground Dice against the labels (against the reference
  model's segmentation when the data has no labels), averaged over samples.

``against_reference()`` scores the same samples against the reference model's own
predictions instead: parity with the FP32 model, whatever its accuracy.

The predict function is called with batches the model takes (``batch`` samples, the
last chunk filled with copies of its last sample when ``pad``: a static batch), and
each sample is scored on its own rows of the outputs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from orchestrator.passes.base import Inputs

if TYPE_CHECKING:  # numpy comes with the first evaluation, not with pass discovery
    import numpy as np

    Predict = Callable[[Inputs], Sequence[np.ndarray]]
else:
    Predict = Callable


@dataclass
class Evaluation:
    """Evaluation samples and a per-sample score; the metric is the mean score."""

    samples: list[Inputs]  # batch-1 inputs, by input name
    targets: list[np.ndarray]  # per sample: class index (or label map) the prediction is scored on
    task: str  # "classification" | "segmentation"
    classes: int  # number of output classes
    metric: str  # what the score means, for logs and reports
    reference_targets: list[np.ndarray] = field(default_factory=list)
    # per sample: the reference model's own prediction (what parity is scored on)
    batch: int = 1  # samples the model runs at once
    pad: bool = False  # a short chunk is filled up to ``batch`` (a static batch)

    def against_reference(self) -> Evaluation:
        """The same samples scored against the reference model's predictions (parity)."""
        metric = "agreement" if self.task == "classification" else "dice_vs_reference"
        targets = self.reference_targets
        return Evaluation(
            self.samples, targets, self.task, self.classes, metric, targets, self.batch, self.pad
        )

    def score_item(self, index: int, outputs: Sequence[np.ndarray]) -> float:
        """Score of one sample's outputs (the first output holds the logits)."""
        import numpy as np

        from orchestrator.core.metrics import mean_foreground_dice

        logits = np.asarray(outputs[0])
        if self.task == "classification":
            return float(int(logits.argmax(-1).ravel()[0]) == int(self.targets[index]))
        return mean_foreground_dice(logits.argmax(1)[0], self.targets[index], self.classes)

    def score(
        self, predict: Predict, indices: Iterable[int] | None = None
    ) -> tuple[float, list[float]]:
        """The metric over ``indices`` (default: every sample) and each sample's score."""
        import numpy as np

        from orchestrator.core.batches import run_batched

        chosen = range(len(self.samples)) if indices is None else list(indices)
        outputs = run_batched(predict, [self.samples[i] for i in chosen], self.batch, self.pad)
        per_item = [self.score_item(i, out) for i, out in zip(chosen, outputs, strict=True)]
        return (float(np.mean(per_item)) if per_item else 0.0), per_item

    def __call__(self, predict: Predict) -> float:
        return self.score(predict)[0]

    def __len__(self) -> int:
        return len(self.samples)


def make_evaluation(
    task: str,
    samples: list[Inputs],
    labels: np.ndarray | None,
    reference: list[list[np.ndarray]],
    classes: int,
    batch: int = 1,
    pad: bool = False,
) -> Evaluation:
    """An Evaluation scoring against ``labels``, or against the reference outputs without them."""
    import numpy as np

    axis = -1 if task == "classification" else 1
    predicted = [np.asarray(r[0]).argmax(axis)[0] for r in reference]
    parity = Evaluation(
        samples, predicted, task, classes, "", predicted, batch, pad
    ).against_reference()
    if labels is None:
        return parity
    targets = [np.asarray(labels[i]) for i in range(len(samples))]
    metric = "accuracy" if task == "classification" else "dice_vs_labels"
    return Evaluation(samples, targets, task, classes, metric, predicted, batch, pad)
