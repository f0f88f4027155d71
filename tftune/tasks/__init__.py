"""Tasks: what the labels are and what the head, the loss and the metrics make of them.

A `Task` says what the head outputs, the loss, the metrics training reports and which way
each is better, how labels are decoded for `predict`, the evaluation report, the export
signature's outputs and how an export is compared with the Keras model. Today's problem
type is single-label classification (`classification`); new ones are added here as Tasks,
registered in `TASKS`, not as branches in the training code: `regression` (a number,
standardised) and `multilabel` (several labels per example, sigmoid outputs).
"""

from __future__ import annotations

from tftune.tasks.base import Task
from tftune.tasks.classification import Classification
from tftune.tasks.multilabel import Multilabel
from tftune.tasks.regression import Regression
from tftune.errors import ConfigError, did_you_mean

TASKS: dict[str, type[Task]] = {
    "classification": Classification,
    "regression": Regression,
    "multilabel": Multilabel,
}


def get_task(name: str, class_names=(), cfg=None, state=None) -> Task:
    """The task called `name` for labels `class_names`, with the run's config `cfg` (its loss
    settings) and the `state` it kept in task.json."""
    if name not in TASKS:
        raise ConfigError(
            f"Unknown task {name!r}.{did_you_mean(name, TASKS)} Expected one of: "
            f"{', '.join(TASKS)}. Received: task={name!r}"
        )
    return TASKS[name](list(class_names), cfg, state)


__all__ = ["Classification", "Multilabel", "Regression", "TASKS", "Task", "get_task"]
