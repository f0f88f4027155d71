"""`tftune sweep`: hyperparameter search over recipe keys with Optuna.

Why Optuna (and not Keras Tuner): tftune trains with its own loop, stage by stage, resuming
from checkpoints, so the search library must not own the training loop. Optuna's ask / tell
interface leaves the loop to tftune; its studies live in a relational database (SQLite by
default, a file beside the trials, so a sweep killed at any moment resumes from it, and a
shared database URL lets several machines join one study); and its pruners take the
per-epoch validation metric tftune already computes. Keras Tuner's oracle keeps its state in
per-trial JSON files of its own format and drives `model.fit`, which tftune does not use.

A sweep lives in `<output>/<name>/`: `sweep.db` (the study), `trials/<name>-tNNN/` (each
trial an ordinary, resumable run directory), `results.csv`, `results.png` and `best.yaml`
(the best trial's recipe, ready for `tftune train`).
"""

from tftune.sweep.runner import SweepSettings, load_sweep_file, sweep

__all__ = ["SweepSettings", "load_sweep_file", "sweep"]
