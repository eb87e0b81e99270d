"""Error classes: each carries its envelope code and HTTP status; app code just raises them."""

from __future__ import annotations


class APIError(Exception):
    status_code = 500
    error_code = "SystemError"
    default_message = "The server could not complete the request."

    def __init__(self, message: str | None = None, *, details: dict | None = None):
        self.message = message or self.default_message
        self.details = details
        super().__init__(self.message)


class ValidationError(APIError):
    status_code = 400
    error_code = "ValidationError"
    default_message = "The request is not valid."


class AuthenticationError(APIError):
    status_code = 401
    error_code = "AuthenticationError"
    default_message = "Authentication credentials were missing or not valid."


class PermissionDeniedError(APIError):
    status_code = 403
    error_code = "PermissionDeniedError"
    default_message = "You do not have permission to do this."


class NotFoundError(APIError):
    status_code = 404
    error_code = "NotFoundError"
    default_message = "Not found."


class ModelNotFoundError(NotFoundError):
    error_code = "ModelNotFoundError"
    default_message = "Model not found in the registry."


class MethodNotAllowedError(APIError):
    status_code = 405
    error_code = "MethodNotAllowedError"
    default_message = "Method not allowed on this route."


class ConflictError(APIError):
    status_code = 409
    error_code = "ConflictError"
    default_message = "The request conflicts with the current state."


class PayloadTooLargeError(APIError):
    status_code = 413
    error_code = "PayloadTooLargeError"
    default_message = "The request body is too large."


class RateLimitError(APIError):
    status_code = 429
    error_code = "RateLimitError"
    default_message = "Too many requests; try again later."


class SystemError(APIError):  # noqa: A001 - the contract's name
    status_code = 500
    error_code = "SystemError"


class ModelLoadError(APIError):
    # 500: the request was valid; loading failed on this host (bad file, engine error, crash).
    status_code = 500
    error_code = "ModelLoadError"
    default_message = "The model could not be loaded."


class ServiceUnavailableError(APIError):
    status_code = 503
    error_code = "ServiceUnavailableError"
    default_message = "The service is not available right now."
