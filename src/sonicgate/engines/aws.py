"""What the AWS engines (Nova Sonic, Bedrock Converse) share: a session's own
credentials and region, and the service's errors in a client's terms."""

from __future__ import annotations

from dataclasses import dataclass, field

from sonicgate.domain import ErrorCode
from sonicgate.engines.base import EngineConfig

# Error types (and words of their messages) that mean AWS refused the caller.
REFUSALS = ("AccessDenied", "UnrecognizedClient", "Signature", "ExpiredToken")
SERVER_FAULTS = ("InternalServer", "ServiceUnavailable", "ModelNotReady")


@dataclass(frozen=True, slots=True)
class AwsCredentials:
    access_key_id: str
    secret_access_key: str = field(repr=False)
    session_token: str | None = field(default=None, repr=False)


def session_credentials(config: EngineConfig) -> AwsCredentials | None:
    """The client's own keys from ``initialize``; None means the server's standard chain
    (environment, profile, instance role)."""
    found = config.credentials
    if not found.get("aws_access_key_id") or not found.get("aws_secret_access_key"):
        return None
    return AwsCredentials(
        found["aws_access_key_id"],
        found["aws_secret_access_key"],
        found.get("aws_session_token"),
    )


def session_region(config: EngineConfig, default: str) -> str:
    return config.credentials.get("aws_region") or default


def service_error(kind: str, status: int | None, message: str) -> tuple[ErrorCode, str] | None:
    """(code, message) for an error AWS answered, from its type name and HTTP status;
    None when neither says what it was."""
    if status in (401, 403) or any(word in kind or word in message for word in REFUSALS):
        return (
            ErrorCode.UNAUTHORIZED,
            f"AWS refused the credentials or the model access; check the key, secret, "
            f"region and model access ({message})",
        )
    if "throttling" in kind.lower() or status == 429:
        return ErrorCode.THROTTLED, message
    if "validation" in kind.lower():
        return ErrorCode.PROVIDER_REJECTED, message
    if any(word in kind for word in SERVER_FAULTS) or (status is not None and status >= 500):
        return ErrorCode.PROVIDER_UNREACHABLE, message
    return None
