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
