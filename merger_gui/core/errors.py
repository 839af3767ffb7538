"""Errors a user can cause and fix; the CLI prints them as one line, the GUI as a message."""


class UserError(Exception):
    """A problem with the user's input (recipe, donor, path, option), not a bug."""


class RecipeError(UserError):
    """A recipe that cannot be read or understood; ``line`` is 1-based when known."""

    def __init__(self, message: str, line: int | None = None) -> None:
        super().__init__(message if line is None else f"line {line}: {message}")
        self.line = line
        self.bare_message = message


class DonorError(UserError):
    """A donor that cannot be found, read or understood."""
