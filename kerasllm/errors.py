"""The one exception type for mistakes a user can fix."""


class UserError(Exception):
    """A problem with the user's input, and how to fix it.

    The CLI prints the message as one line and exits with code 2 (no traceback
    unless `--debug`). Write the message as "<what is wrong>; <what to do>".
    """
