"""Exceptions a user can cause. Pages catch `RHFError` and show its message; nothing else is caught broadly."""


class RHFError(Exception):
    """Base class for every error `rhf_core` raises on purpose."""


class DatasetSpecError(RHFError, ValueError):
    """A dataset spec string or argument that cannot be understood."""


class DatasetNotFoundError(RHFError, FileNotFoundError):
    """A path named by a spec does not exist, or holds none of the files the source needs."""


class DatasetFormatError(RHFError, ValueError):
    """Files exist but are not in the format the source reads (wrong columns, not a TFRecord, ...)."""


class RecordNotFoundError(RHFError, KeyError):
    """No record with that id or index."""

    def __str__(self):  # KeyError quotes its message; keep it readable.
        return str(self.args[0]) if self.args else ""


class ImageLoadError(RHFError, ValueError):
    """An image that cannot be decoded, is too large, or is not an image at all."""


class InvalidArgumentError(RHFError, ValueError):
    """A public function's argument that is out of range or of the wrong kind (checked before any work)."""


class SharedModeError(RHFError, PermissionError):
    """Refused by the shared-server policy (a path outside the allowed folders, a cap exceeded).

    Its message never names a server path."""


class FolderBusyError(RHFError, TimeoutError):
    """Another save held a folder's labels lock for too long (rhf_core.annotation); try again."""
