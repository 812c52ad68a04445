"""The errors a user can act on: each says, in one line, what was wrong and what would be accepted.

Commands (train.py, eval.py, hcnet.tools.*) print them as `error: ...` and exit with status 1; a
fault of the machines (`FaultError`) ends the same way with status 75 (EX_TEMPFAIL): running the
same command again resumes (docs/reliability.md).
"""

FAULT_EXIT = 75  # sysexits' EX_TEMPFAIL: a temporary failure, the same command again resumes


class UserError(ValueError):
    """A problem with what the user gave (a config, a file, a dataset), said in one line."""


class ConfigError(UserError):
    """A config field with a value that cannot work."""


class DataError(UserError):
    """A dataset, split or file problem."""


class ConversionError(UserError):
    """A state_dict that does not fit the model; the message names the keys."""


class FaultError(RuntimeError):
    """A fault of the machines or services (Cloud Storage that stays down or turns a run away, a
    full disk), said in one line; the run's last complete checkpoint stands."""


def described(e: BaseException) -> str:
    """An exception as one line: its type and the first line of its message."""
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0][:240] if lines else 'no message'}"


def no_arguments(argv: list[str]) -> None:
    """One line for words after the flags of a command that takes flags only (absl passes them on
    to main): a flag missing its `--`, or a value split from its flag by a space."""
    if len(argv) > 1:
        raise UserError(
            f"unexpected arguments {argv[1:]}: this command takes flags only, as --name=value"
        )


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing for every command (app.run's flags_parser), with a bad flag or
    --config override said in one line: absl prints two for an unknown flag, ml_collections raises
    tracebacks for an unknown config field, and for a config file that failed to load when the
    command first reads it."""
    import sys

    from absl import flags

    try:
        rest = flags.FLAGS(argv)
    except Exception as e:  # flags.Error, or what a --config.field override raised
        while e.args and isinstance(e.args[0], BaseException):
            e = e.args[0]  # ml_collections wraps the KeyError that says which field
        missing = _said(e).split(";")[0].strip("'\"")  # a field the config lacks, if that is it
        arg = next(
            (
                a.partition("=")[0]
                for a in argv
                if isinstance(e, (KeyError, AttributeError))
                and a.startswith("--config.")
                and missing in a.partition("=")[0].split(".")
            ),
            None,
        )
        if arg:
            sys.exit(f"error: {arg}: no such field {_said(e)}")
        if not isinstance(e, flags.Error):  # the code of a --config file raised as it loaded
            given = _given(argv, "config")
            sys.exit(f"error: {given}: {type(e).__name__}: {_said(e)}")
        sys.exit(f"error: {_said(e)}")
    for name in list(flags.FLAGS):
        value = getattr(flags.FLAGS, name)
        if type(value).__name__ == "_ErrorConfig":  # ml_collections keeps the load's error
            error = object.__getattribute__(value, "_error")
            given = _given(argv, name)
            sys.exit(f"error: {given}: {type(error).__name__}: {_said(error)}")
    return rest


def _given(argv: list[str], name: str) -> str:
    """The flag as the user wrote it, `--name=value`, or `--name`."""
    return next((a for a in argv if a.startswith(f"--{name}=")), f"--{name}")


def _said(e: BaseException) -> str:
    """An exception's message in one line: its last two non-empty lines, or where it quotes a
    traceback (a config file that raised), its first line and the traceback's last."""
    text = e.args[0] if e.args and isinstance(e.args[0], str) else str(e)
    lines = [line.strip() for line in text.strip().splitlines() if line.strip().strip("^~")]
    if any(line.startswith("Traceback") for line in lines):
        return f"{lines[0].rstrip(':')}: {lines[-1]}"
    return "; ".join(lines[-2:]) if lines else type(e).__name__
