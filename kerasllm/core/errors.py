"""The one exception type for mistakes a user can fix."""


class UserError(Exception):
    """A problem with the user's input, and how to fix it.

    The CLI prints the message as one line and exits with code 2 (no traceback
    unless `--debug`). Write the message as "<what is wrong>; <what to do>".
    """


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C (or SIGTERM) while a run folder was planned or training: the CLI says whether and how to resume it.

    Args:
        run_dir: the run's folder (it may not exist yet, or hold no checkpoint).
    """

    def __init__(self, run_dir):
        super().__init__(str(run_dir))
        self.run_dir = run_dir
