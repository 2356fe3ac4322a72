"""User-facing errors.

Every error a user can cause (bad input, unknown names, limits) is a ``ShoplensError``.
The CLI prints it as one line and exits 2; the HTTP service returns it as
``{"error": {"code", "message"}}`` with ``http_status``. Anything else is a bug.
"""

from __future__ import annotations


class ShoplensError(Exception):
    """Base class for errors caused by input, not by a bug."""

    code: str = "bad_request"
    http_status: int = 400

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code

    def to_dict(self) -> dict[str, dict[str, str]]:
        return {"error": {"code": self.code, "message": self.message}}


class InvalidInputError(ShoplensError):
    """Malformed request, manifest, option or query."""

    code = "invalid_input"
    http_status = 422


class ImageError(InvalidInputError):
    """An image that cannot be used: corrupt, truncated, wrong format, too large."""

    code = "invalid_image"


class NotFoundError(ShoplensError):
    """An unknown catalogue, sku, encoder or index."""

    code = "not_found"
    http_status = 404


class PayloadTooLargeError(ShoplensError):
    """An upload or download over its size limit."""

    code = "payload_too_large"
    http_status = 413


class NotReadyError(ShoplensError):
    """A resource exists but is not built yet (e.g. no index for a catalogue)."""

    code = "not_ready"
    http_status = 409


class ServiceUnavailableError(ShoplensError):
    """The service is up but cannot answer yet (index still loading, or failed to load)."""

    code = "not_ready"
    http_status = 503


class TrainingError(ShoplensError):
    """Training cannot go on (e.g. a non-finite loss); the last good checkpoint is kept."""

    code = "training_failed"
    http_status = 422


class UnauthorizedError(ShoplensError):
    """No API key, or one that is unknown or revoked."""

    code = "unauthorized"
    http_status = 401


class ForbiddenError(ShoplensError):
    """A valid API key whose scope does not allow the request."""

    code = "forbidden"
    http_status = 403
