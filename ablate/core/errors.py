"""User-facing errors: one line that says what is wrong and what to do.

The CLI prints `AblateError` messages without a traceback (unless `--debug`),
so anything a user can fix by changing their input should raise this type.
"""


class AblateError(Exception):
    """An error caused by user input; its message is shown as-is, on one line."""


def first_line(err: BaseException | str, default: str | None = None) -> str:
    """The first non-empty line of an error's text (library errors span many lines);
    `default`, else the error's type name, when it has no text."""
    lines = [ln for ln in str(err).strip().splitlines() if ln.strip()]
    if lines:
        return lines[0].strip()
    if default is not None:
        return default
    return type(err).__name__ if isinstance(err, BaseException) else ""
