"""Checkpoint files: atomic writes and safe reads.

Every oqat file is a plain dict with a "format" tag, loaded with weights_only=True (no
arbitrary unpickling), and carries what is needed to rebuild its model (space, bits, ...).
`oqat.files` writes each kind of file and checks it as a whole on top of these reads.
"""
import json
import os
import tempfile
import zipfile

import torch


class CheckpointError(ValueError):
    pass


class WriteError(OSError):
    """An output could not be written (disk full, read-only, ...); the message is one line
    naming the file. Its previous version, if any, is untouched."""


def _os_error(err: BaseException) -> OSError | None:
    # torch.save reports a failed write as a RuntimeError whose context is the OSError.
    while err is not None and not isinstance(err, OSError):
        err = err.__cause__ or err.__context__
    return err


def atomic_write(path: str, write) -> None:
    """Call write(file) on a temp file beside `path`, fsync, then rename over `path`:
    a crash leaves either the old file or the new one, never half of one. A failure of the
    file system (ENOSPC, EROFS, ...) is a WriteError naming `path`."""
    path = os.path.abspath(path)
    tmp = None
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-" + os.path.basename(path))
        os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide results from the user's group
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        cause = _os_error(err)
        if cause is None or not isinstance(err, Exception) or isinstance(err, WriteError):
            raise
        kept = "its previous version is kept" if os.path.exists(path) else "nothing was written"
        error = WriteError(f"cannot write '{path}': {cause.strerror or cause}; {kept}")
        error.errno = cause.errno
        raise error from None
    dir_fd = os.open(os.path.dirname(path), os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    finally:
        os.close(dir_fd)


def write_text(path: str, text: str) -> None:
    """`text` as UTF-8, written atomically (atomic_write)."""
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def write_json(path: str, obj) -> None:
    """`obj` as JSON, indented, one newline at the end, written atomically; a number JSON has no
    type for (a numpy or torch scalar) is written as a float."""
    write_text(path, json.dumps(obj, indent=1, default=float) + "\n")


PNG_DPI = 110  # every plot's resolution


def write_png(path: str, fig) -> None:
    """A matplotlib Figure as a PNG at PNG_DPI, laid out tight, written atomically. Plots are
    made on matplotlib.figure.Figure, not through pyplot: nothing chooses a backend for the
    process, and no figure stays open in pyplot's registry."""
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=PNG_DPI))


def read_json(path: str, what: str):
    """A JSON file a user gave us; missing, unreadable or malformed: one line naming it as `what`."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise ValueError(f"{what} '{path}' not found") from None
    except (IsADirectoryError, PermissionError) as err:
        raise ValueError(f"{what} '{path}' cannot be read: {err.strerror}") from None
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ValueError(f"{what} '{path}' is not valid JSON: {first}") from None


def save(path: str, obj: dict) -> None:
    atomic_write(path, lambda f: torch.save(obj, f))


def read_torch(path: str):
    """Whatever a torch file holds, read safely (weights_only=True: tensors and plain containers only)."""
    if os.path.isdir(path):
        raise CheckpointError(f"checkpoint '{path}' is a folder; expected a checkpoint file (torch.save's)")
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint '{path}' not found")
    try:
        # torch records a CRC32 per entry of its zip but does not check it on load: a flipped
        # bit in tensor data would load as a wrong weight. zipfile checks them.
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as z:
                bad = z.testzip()
            if bad is not None:
                raise CheckpointError(f"checkpoint '{path}' is corrupt: checksum mismatch in {bad}")
        return torch.load(path, map_location="cpu", weights_only=True)
    except CheckpointError:
        raise
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"checkpoint '{path}' is corrupt, truncated or not a safe torch file: {first}") from None
    except Exception as err:  # the unpickler's own errors for foreign objects
        raise CheckpointError(f"checkpoint '{path}' is not a torch checkpoint of tensors and plain containers "
                              f"(torch.save's; {type(err).__name__})") from None


def load(path: str, *formats: str) -> dict:
    """Read an oqat checkpoint; `formats` are the accepted "format" tags (any if none).
    Only the tag is checked here: `oqat.files` checks each kind's fields."""
    obj = read_torch(path)
    if not isinstance(obj, dict) or "format" not in obj:
        raise CheckpointError(f"'{path}' is not an oqat checkpoint (no 'format' field)")
    if formats and obj["format"] not in formats:
        raise CheckpointError(f"'{path}' is a {obj['format']!r} file; expected {' or '.join(formats)}")
    return obj
