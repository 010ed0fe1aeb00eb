"""The exceptions of ptfile. Every error ptfile raises for a file is a :class:`Error`; the
message is the one the ``ptfile`` command prints."""


class Error(Exception):
    """Base class of every error ptfile raises about a checkpoint or its use."""


class UnsafeError(Error):
    """The file names something torch.load(weights_only=True) would refuse (a global that
    could run code, an instance of an arbitrary class). Nothing was imported or run."""


class InvalidCheckpoint(Error):
    """The file is damaged or is not a PyTorch checkpoint (bad container, malformed pickle,
    a tensor past the end of its storage, ...)."""


class UnsupportedError(Error):
    """A valid file holding something this version of ptfile cannot give (a TorchScript
    archive to ``load``, a cyclic structure, a dtype this torch lacks, ...)."""


class PlacementError(Error, RuntimeError):
    """A storage cannot go where map_location sent it and ``strict=True`` forbids falling back
    to the CPU (torch.load raises RuntimeError there)."""


class ReadError(Error, OSError):
    """The file cannot be read (missing, a directory, permissions); ``errno`` and ``filename``
    are set as on an OSError."""

    def __str__(self):
        return str(self.args[0]) if self.args else ""


class WriteError(Error, OSError):
    """A checkpoint could not be written."""

    def __str__(self):
        return str(self.args[0]) if self.args else ""


class UsageError(Error, ValueError):
    """A bad argument (map_location, format, an object ``save`` cannot write)."""


__all__ = [
    "Error",
    "UnsafeError",
    "InvalidCheckpoint",
    "UnsupportedError",
    "PlacementError",
    "ReadError",
    "WriteError",
    "UsageError",
]
