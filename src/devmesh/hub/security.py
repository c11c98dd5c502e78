"""Secrets of the hub: password hashes (argon2), JWTs (HS256), API keys, agent credentials and
enrollment tokens (random, kept only as SHA-256: they are long and random, so a fast hash is enough)."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from typing import Any

import jwt
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from devmesh.hub import limits

API_KEY_PREFIX = "dmk_"
ENROLL_PREFIX = "dme_"
_hasher = PasswordHasher()
# Verifying a login for an unknown user costs the same as for a known one.
_DUMMY_HASH = _hasher.hash(secrets.token_urlsafe(16))


class InvalidToken(Exception):
    """A JWT that is malformed, expired or signed with another secret."""


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(password_hash: str | None, password: str) -> bool:
    try:
        return _hasher.verify(password_hash or _DUMMY_HASH, password) and password_hash is not None
    except (VerificationError, InvalidHashError):
        return False


def digest(secret: str) -> str:
    """The SHA-256 (hex) the hub stores for a random secret."""
    return hashlib.sha256(secret.encode()).hexdigest()


def same(a: str, b: str) -> bool:
    return hmac.compare_digest(a, b)


def new_api_key() -> str:
    return API_KEY_PREFIX + secrets.token_urlsafe(32)


def new_enrollment_token() -> str:
    return ENROLL_PREFIX + secrets.token_urlsafe(32)


def new_credential() -> str:
    return secrets.token_urlsafe(32)


def new_secret() -> str:
    return secrets.token_urlsafe(48)


@dataclass(frozen=True, slots=True)
class IssuedToken:
    token: str
    expires: float


def issue_jwt(secret: str, user_id: int, username: str, *, now: float | None = None) -> IssuedToken:
    issued = time.time() if now is None else now
    expires = issued + limits.JWT_TTL_S
    claims: dict[str, Any] = {
        "sub": str(user_id),
        "name": username,
        "iat": int(issued),
        "exp": int(expires),
        "iss": "devmesh-hub",
    }
    return IssuedToken(jwt.encode(claims, secret, algorithm="HS256"), expires)


def read_jwt(secret: str, token: str) -> int:
    """The user id a valid token names."""
    try:
        claims = jwt.decode(
            token, secret, algorithms=["HS256"], issuer="devmesh-hub", options={"require": ["exp", "sub"]}
        )
        return int(claims["sub"])
    except (jwt.PyJWTError, ValueError, KeyError) as error:
        raise InvalidToken(str(error)) from error
