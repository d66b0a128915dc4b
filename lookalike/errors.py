"""User-facing errors."""


class LookalikeError(Exception):
    """An error with a one-line, user-facing message naming the file and the reason."""


class ImageDecodeError(LookalikeError):
    """An image file that cannot be read, with the file and the reason."""

    def __init__(self, path: object, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"{path}: {reason}")
