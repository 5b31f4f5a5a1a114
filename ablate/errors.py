"""User-facing errors: one line that says what is wrong and what to do.

The CLI prints `AblateError` messages without a traceback (unless `--debug`),
so anything a user can fix by changing their input should raise this type.
"""


class AblateError(Exception):
    """An error caused by user input; its message is shown as-is, on one line."""
