"""Errors that the CLI turns into one clear line and a non-zero exit."""


class FedBatError(Exception):
    """Base class: a user-facing problem (bad config, missing or corrupt data)."""


class ConfigError(FedBatError, ValueError):
    """A setting is unknown or out of range."""


class DataError(FedBatError):
    """A dataset is missing, truncated or fails its checksum."""


class WorkdirError(FedBatError):
    """A workdir cannot be used: another run holds it, it holds a different run, or its files are unreadable."""


class DivergenceError(FedBatError):
    """Training diverged: a non-finite training loss or global model. ``round``: the first bad round;
    ``records``: the good rounds' metrics, as ``fb.run`` returns them."""

    def __init__(self, message: str, round: int, records: list):
        super().__init__(message)
        self.round, self.records = round, records


class JobError(FedBatError):
    """A multi-process job lost one of its processes (a collective with a dead or silent peer failed)."""


class SlowStart(JobError):
    """A multi-process job did not start: a process had not reached the first round when another's collective
    gave up on it (a slow start, still loading or compiling, or a failed one). ``fedbat_jax.launch`` retries."""


class Terminated(Exception):
    """SIGTERM arrived: raised in the main thread (so open workdirs close and the last checkpoint stays), at once
    in a single process, at the end of the round in progress in every process of a multi-process job.
    ``interrupted``: the job's stop was a Ctrl-C (SIGINT, which ``fedbat_jax.launch`` passes on as such), so every
    line says "interrupted"."""

    def __init__(self, *args, interrupted: bool = False):
        super().__init__(*args)
        self.interrupted = interrupted
