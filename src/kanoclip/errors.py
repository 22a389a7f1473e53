"""Exceptions a user can cause. Each message says what was wrong and what to do; the CLI prints it without a
traceback."""


class KanoclipError(Exception):
    """Base class: a problem with the user's input, files or environment (not a bug in kanoclip)."""


class ConfigError(KanoclipError, ValueError):
    """A configuration value is invalid or inconsistent with the backbone."""


class BackboneError(KanoclipError):
    """CLIP weights could not be found, downloaded or understood."""


class CheckpointError(KanoclipError):
    """A kanoclip checkpoint (learnable weights + JSON config) is missing, corrupt or incompatible."""


class ImageReadError(KanoclipError):
    """An image or mask file is missing, corrupt or not an image."""


class ImageTooLarge(ImageReadError):
    """An image is over the pixel, frame or byte limit: refused before its pixels are decoded."""


class DatasetError(KanoclipError):
    """A dataset folder has an unknown or inconsistent layout."""


class KnowledgeError(KanoclipError):
    """Knowledge files are missing or a chat server could not answer."""
