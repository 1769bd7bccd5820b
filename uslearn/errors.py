"""Errors a user can act on. The CLI prints their message (no traceback) and exits with 2."""


class UserError(Exception):
    """Bad input or an unmet precondition; the message names the file/line/field and what was expected."""
