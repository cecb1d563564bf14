"""Errors that name what is wrong, so a user can fix the input instead of reading a traceback."""


class EveError(ValueError):
    """Base class of every input error raised by eve-vlm."""


class PlaceholderMismatchError(EveError):
    """The image placeholder tokens in `input_ids` do not match the images given."""


class BadSampleError(EveError):
    """A training / evaluation sample that cannot be used.

    `reason` is a short stable key (e.g. "image_unreadable", "placeholder_mismatch") used to
    count skipped samples by cause; the message says what exactly was wrong.
    """

    def __init__(self, reason: str, message: str, sample_id: str | None = None):
        self.reason = reason
        self.sample_id = sample_id
        where = f" (sample {sample_id})" if sample_id is not None else ""
        super().__init__(f"{reason}: {message}{where}")


class ImageTooLargeError(EveError):
    """An image whose file bytes or decoded pixels exceed the configured caps."""


class ConversionError(EveError):
    """A checkpoint folder that cannot be converted (missing files, unsupported config, ...)."""


class CheckpointMismatchError(ConversionError):
    """A checkpoint whose tensors (names or shapes) differ from what its config describes."""


class MissingExtraError(EveError, ImportError):
    """A feature whose optional dependencies (a pip extra of eve-vlm) are not installed.

    An `EveError`, so `eve` prints the install command instead of a traceback; an `ImportError`,
    so code that probes for optional packages keeps working."""

    def __init__(self, extra: str, feature: str, module: str | None):
        self.extra = extra
        super().__init__(f"{feature} needs the {extra} extra (no module {module!r}): pip install 'eve-vlm[{extra}]'")
        self.name = module
