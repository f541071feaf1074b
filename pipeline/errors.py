"""User-facing errors: one line that names the file or value at fault and what to do about it."""


class SslpipeError(Exception):
    """Base class; the CLI prints these as one line instead of a traceback."""


class ShardError(SslpipeError):
    """A shard directory, manifest or shard file is missing, corrupt or inconsistent."""


class SourceError(SslpipeError):
    """A dataset source cannot be found, read or understood."""


class ConfigError(SslpipeError):
    """A configuration key or value is wrong."""


class RunStopped(SslpipeError):
    """A run was stopped (SIGTERM, Ctrl-C) before it ended; the same command resumes it."""
