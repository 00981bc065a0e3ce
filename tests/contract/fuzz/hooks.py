"""Schemathesis hooks for users-api.

Some rules of the contract cannot be said in an OpenAPI 3.0 schema, which the service answers 422
as the contract asks, and which schemathesis would count as "schema-valid request rejected":

- a SignUp password must not be among the commonest passwords (the list the service ships,
  src/domain/common-passwords.txt) nor be the email;
- metadata keys are 1 to 40 characters (OpenAPI 3.0 has no `propertyNames`), a non-string value's
  JSON text is at most 500 characters, the whole object at most 8 KiB, and no key or string in it,
  however deeply nested, holds U+0000 (PostgreSQL's jsonb cannot store it), and every number in it
  is exact (an integer beyond 64 bits, read as a double, would be stored rounded).

`before_call` runs before every request of every phase. It rewrites exactly those values, keeping
the body schema-valid, and leaves everything else alone: every other rule is in the spec (lengths,
formats, patterns, enums, maxProperties), so any other 422 to schema-valid data is a failure.
Schema-invalid values (negative tests) are never touched.
"""

import json
import pathlib

import schemathesis

_LIST = pathlib.Path(__file__).resolve().parents[3] / "src" / "domain" / "common-passwords.txt"
COMMON = frozenset(line for line in _LIST.read_text(encoding="utf-8").splitlines() if line)

# Margins below the service's own bounds: Python and Rust print some JSON numbers differently.
VALUE_JSON_CHARS = 450
TOTAL_JSON_BYTES = 7500


def _refused_password(password, email):
    folded = password.strip().lower()
    return folded in COMMON or (isinstance(email, str) and folded == email.strip().lower())


def _fix_password(body):
    password = body.get("password")
    if not isinstance(password, str) or not 8 <= len(password) <= 128 or not password.strip():
        return
    for prefix in ("Zq7~", "Yx3^", "Wv5%"):
        if not _refused_password(password, body.get("email")):
            break
        password = prefix + password[len(prefix):]
    body["password"] = password


def _json_text(value):
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _without_nul(value):
    if isinstance(value, str):
        return value.replace("\x00", "0")
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and not -(2**63) <= value < 2**64:
        return 0
    if isinstance(value, float) and abs(value) >= 2.0**53:
        return 0.5
    if isinstance(value, list):
        return [_without_nul(item) for item in value]
    if isinstance(value, dict):
        return {_without_nul(key): _without_nul(item) for key, item in value.items()}
    return value


def _fix_metadata(body):
    metadata = body.get("metadata")
    if not isinstance(metadata, dict) or len(metadata) > 50:
        return
    fixed = {}
    for index, (key, value) in enumerate(_without_nul(metadata).items()):
        if not 1 <= len(key) <= 40:
            key = f"k{index}"
        if not isinstance(value, str) and len(_json_text(value)) > VALUE_JSON_CHARS:
            value = None
        fixed[key] = value
    while fixed and len(_json_text(fixed).encode("utf-8")) > TOTAL_JSON_BYTES:
        fixed.pop(next(iter(fixed)))
    body["metadata"] = fixed


@schemathesis.hook
def before_call(context, case, kwargs):
    if isinstance(case.body, dict):
        _fix_password(case.body)
        _fix_metadata(case.body)
