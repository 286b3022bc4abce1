"""The one error type that reaches the user as a one-line message (exit code 2)."""


class UserError(Exception):
    """Bad input the user can fix: a missing file, an unknown config key, a corrupt shard.

    The message is one line that names the file or key and says what to do. The CLIs
    print it as ``error: <message>`` and exit with code 2, without a traceback.
    """

    exit_code = 2


def run_cli(fn, *args, **kwargs) -> int:
    """Call ``fn``; turn a UserError into ``error: <message>`` on stderr and exit code 2,
    and Ctrl-C into exit code 130 (long jobs resume from their last complete piece)."""
    import sys

    try:
        fn(*args, **kwargs)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return UserError.exit_code
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    return 0
