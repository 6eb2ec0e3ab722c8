"""User-facing errors: the CLI prints their message as one line and exits non-zero."""


class UserError(Exception):
    """Bad input from the user (model name, prompt, options). Shown without a traceback."""


class RuntimeFault(RuntimeError):
    """A launch or communication problem of a private run: reported as one line, exit status 3."""
