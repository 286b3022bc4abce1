"""The one error type that reaches the user as a one-line message (exit code 2)."""

from __future__ import annotations

import json
import os
import sys
import time


NON_ZERO_RANK_GRACE_S = 2.0


class UserError(Exception):
    """Bad input the user can fix: a missing file, an unknown config key, a corrupt shard.

    The message is one line that names the file or key and says what to do. The CLIs
    print it as ``error: <message>`` and exit with code 2, without a traceback.
    """

    exit_code = 2


def launcher_rank() -> int:
    """This process's global rank under a launcher (``RANK``, set by torchrun, the DeepSpeed
    launcher and ``pretrain.training.distributed``); 0 without one."""
    rank = os.environ.get("RANK", "0")
    return int(rank) if rank.isdigit() else 0


def run_cli(fn, *args, **kwargs) -> int:
    """Call ``fn``; turn a UserError into ``error: <message>`` on stderr and exit code 2,
    and Ctrl-C into exit code 130 (long jobs resume from their last complete piece).

    Under a launcher every rank runs the same checks and fails with the same message, so
    only rank 0 prints it; the other ranks exit quietly with the same code, after
    ``NON_ZERO_RANK_GRACE_S`` so that rank 0 is the first to exit. Under torchrun
    each rank also leaves its message in torchrun's error file (``TORCHELASTIC_ERROR_FILE``),
    so torchrun's failure report names it — also a message only a non-zero rank had.
    """
    try:
        fn(*args, **kwargs)
    except UserError as e:
        _tell_torchrun(f"error: {e}")
        if launcher_rank() == 0:
            print(f"error: {e}", file=sys.stderr)
        else:
            # A launcher stops every worker once one has exited: give rank 0 the time to
            # print the message and be the first failure its report names.
            time.sleep(NON_ZERO_RANK_GRACE_S)
        return UserError.exit_code
    except KeyboardInterrupt:
        if launcher_rank() == 0:
            print("interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    return 0


def _tell_torchrun(message: str) -> None:
    """Write ``message`` where torchrun's failure report looks for a worker's error (the
    JSON layout of ``torch.distributed.elastic``'s ErrorHandler.record_exception, with the
    one line in place of a traceback). No-op outside torchrun."""
    path = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if not path:
        return
    data = {"message": {"message": message, "extraInfo": {"py_callstack": message, "timestamp": str(int(time.time()))}}}
    try:
        with open(path, "w") as f:
            json.dump(data, f)
    except OSError:
        pass  # the report then says "To enable traceback see ..."; the exit code still tells


def not_utf8(path) -> UserError:
    """The UserError for a text file that does not decode as UTF-8, naming its first bad
    line and byte (a reader's ``UnicodeDecodeError`` only knows an offset into a buffer)."""
    with open(path, "rb") as f:
        for n, raw in enumerate(f, start=1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as e:
                return UserError(f"{path}:{n}: not UTF-8 text (byte 0x{raw[e.start]:02x} at column {e.start + 1}); "
                                 "convert the file to UTF-8, e.g. iconv -f latin1 -t utf-8")
    return UserError(f"{path}: not UTF-8 text; convert the file to UTF-8, e.g. iconv -f latin1 -t utf-8")
