"""A scored file's status: the words every predict module and output agree on."""

OK, NO_FACE = "ok", "no face"  # else "error: <one line>"
