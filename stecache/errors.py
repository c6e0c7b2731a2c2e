"""Domain errors. The library raises these; `cli/` turns each into a one-line message and exit 1."""


class StecacheError(Exception):
    """Base of every error a user can cause and fix; its message says what and where."""


class AnnotationError(StecacheError, ValueError):
    """A malformed annotation file: the message names the file and line."""


class VideoError(StecacheError):
    """A video that cannot be used: the message names the file."""


class MissingVideo(VideoError):
    """The video file does not exist."""


class CorruptVideo(VideoError):
    """The file cannot be decoded (truncated, zero bytes, not a video container)."""


class NoVideoStream(VideoError):
    """The container has no video stream (e.g. audio only)."""


class EmptyVideo(VideoError):
    """The video stream decodes to zero frames."""


class CheckpointMismatch(StecacheError):
    """A checkpoint does not fit the backbone: the message lists missing and unexpected keys."""


class CacheMismatch(StecacheError):
    """A cache was made with other settings than the ones asked for: the message shows the difference."""


class CacheBusy(StecacheError):
    """Another process is extracting into this cache."""


class CacheIncomplete(StecacheError):
    """A cache still has rows not extracted."""


class HeadConfigError(StecacheError, ValueError):
    """A head that cannot be built for this feature shape (bad name, depth, patch size or option)."""


class EmptySplit(StecacheError):
    """A split to train or evaluate on has no usable clips."""


class TrainError(StecacheError):
    """Training cannot start as asked (a class without training examples, a run folder of another run)."""


class SweepError(StecacheError):
    """A sweep that cannot be expanded (bad head spec, table name or --set key/value)."""


class ResultsError(StecacheError):
    """A results.jsonl that is missing, malformed, or holds no run a table needs."""


class ExtractionFailed(StecacheError):
    """Some clips could not be extracted (recorded in the cache); the message summarises them."""


class RunError(StecacheError):
    """A run folder that cannot be used (not a trained run, unreadable config)."""


class PathOutsideRoot(StecacheError):
    """A clip whose real path (symlinks resolved) leaves its data root, or that is no local file: refused."""


class RunBusy(StecacheError):
    """Another process is writing this run folder or sweep --out (it holds the folder's .lock)."""


class NonFiniteLoss(TrainError):
    """A training loss became NaN or inf: the message names the epoch, batch and clip ids."""


class CacheCorrupt(StecacheError):
    """A cache whose files are damaged: bytes that fail their checksum, unreadable metadata or shards."""


class BadValue(StecacheError, ValueError):
    """A flag or file value that is out of range or of the wrong kind: the message names the flag/file."""
