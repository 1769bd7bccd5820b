"""Salted-hash pseudonyms for patient, exam and image identifiers.

A pseudonym is ``<kind>-<16 hex digits>`` of HMAC-SHA256(salt, kind + value): stable for one
salt (re-importing with the same salt gives the same ids, so datasets can be joined), but not
reversible and not guessable from a list of hospital IDs without the salt. Keep the salt
secret and outside the dataset; anyone holding it can test whether a known ID is present.
64 bits make an accidental collision among a million identifiers a ~3e-8 event.
"""

from __future__ import annotations

import hashlib
import hmac
import os

from uslearn.errors import UserError
from uslearn.log import get_logger

log = get_logger(__name__)

SALT_ENV = "USLEARN_SALT"
# Public on purpose: anyone can recompute pseudonyms made with it. Tests and the phantom only.
INSECURE_DEFAULT_SALT = "uslearn-insecure-default-salt"
KINDS = {"patient": "p", "exam": "e", "image": "i"}


def resolve_salt(salt: str | None, insecure_default: bool = False) -> str:
    """Return the salt from ``salt``, else ``$USLEARN_SALT``, else the insecure default if allowed.

    Raises:
        UserError: if the salt is only blanks, or none is given and ``insecure_default`` is
            False.
    """
    source = "--salt" if salt else SALT_ENV
    salt = salt if salt else os.environ.get(SALT_ENV, "")
    if salt and not salt.strip():
        raise UserError(
            f"{source}: the salt is only blanks; give a secret (a blank salt protects nothing)"
        )
    if salt:
        return salt
    if insecure_default:
        log.warning(
            "using the public default salt: pseudonyms can be recomputed by anyone who has the "
            "raw IDs; pass --salt or set %s for real patient data",
            SALT_ENV,
        )
        return INSECURE_DEFAULT_SALT
    raise UserError(
        f"no salt for pseudonymising patient/exam IDs: pass --salt SECRET or set {SALT_ENV} "
        "(keep it outside the dataset; the same salt gives the same pseudonyms), "
        "or --insecure-default-salt for test data only"
    )


def pseudonym(kind: str, value: str, salt: str) -> str:
    """Return the pseudonym of ``value`` for ``kind`` (patient, exam or image), e.g. ``p-1a2b...``."""
    prefix = KINDS[kind]
    digest = hmac.new(salt.encode(), f"{kind}\x00{value}".encode(), hashlib.sha256)
    return f"{prefix}-{digest.hexdigest()[:16]}"
