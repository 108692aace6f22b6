"""The one exception type for problems a user can fix (bad paths, bad data, stale files).

The CLI prints its message and exits with `exit_code` (2); anything else is a bug and keeps
its traceback.
"""


class AlexnetError(Exception):
    """A problem with the user's input, with a message that names the file and what to do."""

    exit_code = 2
