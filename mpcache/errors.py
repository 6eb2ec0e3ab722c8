"""User-facing errors: the CLI prints their message as one line and exits non-zero."""


class UserError(Exception):
    """Bad input from the user (model name, prompt, options). Shown without a traceback."""
