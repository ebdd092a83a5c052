"""The project's exceptions. The CLI prints any EdgeDermError as one line and
exits non-zero; every message names the file (or setting) and the problem."""


class EdgeDermError(Exception):
    """Base class: an error caused by the user's input, not a bug."""


class LabelError(EdgeDermError):
    """A raw label string that the schema does not know."""


class ImageError(EdgeDermError):
    """An image that is missing, unreadable, truncated or of an unsupported kind."""


class DataError(EdgeDermError):
    """A dataset release that does not follow the derm7pt layout."""


class ConfigError(EdgeDermError):
    """A model or run configuration that is invalid."""


class PretrainedError(EdgeDermError):
    """Pretrained weights that are missing or do not fit the encoder."""
