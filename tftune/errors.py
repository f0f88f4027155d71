"""User-facing errors.

Every problem a user can fix (bad config, missing data, a backbone that needs the network, ...)
raises `TftuneError` with a message that names the problem and the fix. The CLI prints the
message on one line and exits with code 2; Python users get an ordinary exception.
"""


class TftuneError(Exception):
    """A problem with the user's input, config, data or environment, with a fix in its message."""


class ConfigError(TftuneError, ValueError):
    """The recipe file or an override is invalid."""


class DataError(TftuneError, ValueError):
    """The data cannot be read or is not usable as given."""


class BackboneError(TftuneError, ValueError):
    """The backbone spec cannot be resolved or loaded."""


class AssetError(TftuneError):
    """A bundled offline asset is missing, corrupt, or cannot be fetched."""


def did_you_mean(value: str, choices, template: str = "'{}'", cutoff: float = 0.6) -> str:
    """' Did you mean X?' for the closest of `choices` to `value`, or '' if none is close.

    `{}` in `template` stands for the suggestion, e.g. "'stages.0.{}'" shows it in context.
    """
    import difflib

    close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1, cutoff=cutoff)
    return f" Did you mean {template.replace('{}', close[0])}?" if close else ""
