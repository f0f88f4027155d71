"""tftune: staged transfer learning for Keras 3 / TensorFlow."""

__version__ = "0.1.0"


def load(run_dir):
    """The predictor of a finished run directory: `tftune.load("runs/x").predict(inputs)`.

    Imports TensorFlow on first use only (importing tftune stays cheap); see
    `tftune.inference.predictor.Predictor`.
    """
    from tftune.inference.predictor import load as _load

    return _load(run_dir)


__all__ = ["load", "__version__"]
