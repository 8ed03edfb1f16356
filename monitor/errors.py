"""What every layer shares about failure: the exit codes and the base of expected errors.

An :class:`ApiwatchError` is a failure the user can fix (bad config, rules, input, database);
the CLI prints it as one line and exits :data:`EXIT_ERROR`, never with a traceback.
"""

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_FINDINGS = 0, 1, 2, 3


class ApiwatchError(Exception):
    """A failure with a message fit for the user: names the file or setting and what is wrong."""
