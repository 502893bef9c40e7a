"""The one error type of data_prep that reaches the person running the command."""


class PrepError(Exception):
    """A problem with the command's inputs or options, worded to say what was wrong and what
    to do. The command line prints it as ``tier-openclip prep: ...`` and exits with status 2."""
