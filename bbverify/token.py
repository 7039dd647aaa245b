"""The JWS layer: strict compact-JWS parsing and the signature check.

:class:`JWSReader` reads a compact token (size cap, split, header against the
algorithm allowlist, payload as JSON) into a :class:`CompactJWS` whose
:meth:`~CompactJWS.verify_signature` checks it against a key; the claims in
its payload are the claims layer's business (:mod:`bbverify.claims`).

Everything here runs before the signature is checked, on bytes an attacker
chose, so it is deliberately narrow: a size cap before anything else, exactly
three non-empty segments, canonical base64url with no padding, JSON objects
only, no duplicate member names, no NaN/Infinity; nesting too deep for the
parser is caught (the size cap bounds it anyway). Anything
else is ``InvalidToken`` with code ``malformed``; nothing else escapes.
"""

from __future__ import annotations

import binascii
import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, NamedTuple, Protocol

from .errors import ErrorCode, InvalidToken

__all__ = [
    "DEFAULT_MAX_TOKEN_BYTES",
    "CompactJWS",
    "Header",
    "JWSReader",
    "ParsedToken",
    "SignatureKey",
    "b64url_decode",
    "decode_payload",
    "loads_strict",
    "parse_header",
    "parse_json_object",
    "pasting_mistake",
    "split",
]

#: Bitbucket step tokens are about 1.2 kB; 8 kB leaves room for ten extra audiences.
DEFAULT_MAX_TOKEN_BYTES = 8192

_B64URL_RE = re.compile(r"[A-Za-z0-9_-]+")
# The last character of a base64 run carries spare bits that must be zero for
# the encoding to be canonical (RFC 4648 section 3.5). Index into the alphabet:
_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
# Byte values, as indexing bytes gives ints.
_CANONICAL_LAST_2 = frozenset(ord(c) for i, c in enumerate(_ALPHABET) if i & 0x0F == 0)
_CANONICAL_LAST_3 = frozenset(ord(c) for i, c in enumerate(_ALPHABET) if i & 0x03 == 0)
_PAD = (b"", b"", b"==", b"=")
# For the strict decoder: base64url's two letters become standard base64's, and
# standard base64's own '+', '/' and '=' (foreign in a base64url segment) become
# '!', which strict a2b_base64 refuses like every other foreign byte.
_URL_TO_STRICT = bytes.maketrans(b"-_+/=", b"+/!!!")
# bytes.translate(None, delete) drops these in one C pass; whatever is left is
# foreign. Much cheaper than a regex over a 1 kB payload (see benchmarks/README.md).
_ALPHABET_BYTES = _ALPHABET.encode("ascii")
_ALPHABET_AND_DOT = _ALPHABET_BYTES + b"."


def _malformed(message: str) -> InvalidToken:
    return InvalidToken(message, code=ErrorCode.MALFORMED)


def b64url_decode(segment: str, what: str = "segment") -> bytes:
    """Decode canonical, unpadded base64url; raise ``InvalidToken`` saying why not."""
    try:
        raw = segment.encode("ascii")
    except UnicodeEncodeError:
        raise _malformed(f"{what} is not unpadded base64url") from None
    decoded = _decode_strict(raw)
    if decoded is not None:
        return decoded
    # Refused: word why, most basic fault first.
    if not raw or raw.translate(None, _ALPHABET_BYTES):
        raise _malformed(f"{what} is not unpadded base64url")
    if len(raw) & 3 == 1:
        raise _malformed(f"{what} has an impossible base64url length")
    raise _malformed(f"{what} is not canonical base64url")


def _decode_strict(raw: bytes) -> bytes | None:
    """Canonical unpadded base64url ``raw`` decoded, or ``None`` when it is not.

    One translation and the standard library's strict C decoder, which
    refuses every byte outside the alphabet: no separate alphabet pass. The
    spare bits of the last character must be zero (RFC 4648 section 3.5).
    The callers word the error (by the step-by-step checks) when it is ``None``.
    """
    rem = len(raw) & 3
    if rem == 1 or not raw:
        return None
    if (rem == 2 and raw[-1] not in _CANONICAL_LAST_2) or (rem == 3 and raw[-1] not in _CANONICAL_LAST_3):
        return None
    try:
        return binascii.a2b_base64(raw.translate(_URL_TO_STRICT) + _PAD[rem], strict_mode=True)
    except (binascii.Error, ValueError):
        return None


def decode_payload(parsed: ParsedToken) -> bytes:
    """Decode the payload segment of a token that :func:`split` accepted; raise ``InvalidToken`` otherwise.

    :func:`split` has checked the payload's alphabet and length; what can
    still fail here is its canonical encoding (RFC 4648 section 3.5).
    """
    return b64url_decode(parsed.payload_segment, "payload")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise _malformed("JSON object has duplicate member names")
    return obj


def _no_constants(name: str) -> Any:
    raise _malformed(f"JSON contains {name}, which is not valid JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _malformed("JSON number is out of range")
    return value


_DECODER = json.JSONDecoder(
    object_pairs_hook=_no_duplicates,
    parse_constant=_no_constants,
    parse_float=_finite_float,
)
# The decoder's own scanner (C when available): parses one value at an index
# and returns it with the index after it. Set by JSONDecoder.__init__; typeshed omits it.
_SCAN: Callable[[str, int], tuple[Any, int]] = _DECODER.scan_once  # type: ignore[attr-defined]


def loads_strict(text: str) -> Any:
    """Parse JSON text by the rules tokens are held to; used for JSON in configuration.

    Duplicate member names, ``NaN``/``Infinity`` and out-of-range numbers are
    refused (RFC 8259 section 4 leaves duplicates undefined; JSON has no
    ``NaN``), so one definition can never silently replace another.

    Raises:
        ValueError: the text is not strict JSON; the message says why.
    """
    try:
        return _DECODER.decode(text)
    except InvalidToken as exc:
        raise ValueError(exc.message) from None
    except RecursionError:
        raise ValueError("JSON is nested too deeply") from None


def parse_json_object(data: bytes, what: str = "segment") -> dict[str, Any]:
    """Parse UTF-8 JSON that must be an object; strict as described above."""
    try:
        text = data.decode("utf-8")
        # The C scanner straight away: JSONDecoder.decode's Python wrapper and
        # its two whitespace regexes cost a measurable share of a fresh token.
        # Anything the scanner does not consume exactly (surrounding
        # whitespace, trailing junk) goes through the full decoder, which
        # accepts or refuses it as before.
        try:
            value, end = _SCAN(text, 0)
        except StopIteration:
            end = -1
        if end != len(text):
            value = _DECODER.decode(text)
    except InvalidToken:
        raise
    except (ValueError, RecursionError, MemoryError):
        # ValueError covers bad UTF-8, bad JSON and over-long integers.
        raise _malformed(f"{what} is not valid JSON") from None
    if not isinstance(value, dict):
        raise _malformed(f"{what} is not a JSON object")
    return value


class ParsedToken(NamedTuple):
    """A token split into its parts; nothing here has been verified."""

    # A NamedTuple rather than a frozen dataclass: just as immutable, and
    # built in a third of the time (one per fresh token; benchmarks/README.md).
    header_segment: str
    payload_segment: str
    signing_input: bytes
    signature: bytes


# tuple.__new__ in C, skipping the NamedTuple's generated Python __new__ (its
# argument handling is most of its cost); the tuple is in field order.
_new_parsed_token = partial(tuple.__new__, ParsedToken)


def split(token: object, max_bytes: int = DEFAULT_MAX_TOKEN_BYTES) -> ParsedToken:
    """Split a compact JWS and decode its signature; raise ``InvalidToken`` (``malformed``) otherwise.

    Every segment is checked to be base64url (the payload's canonical
    encoding is left to :func:`decode_payload`); nothing is parsed as JSON.
    """
    return _split(token, max_bytes)[0]


def _split(token: object, max_bytes: int) -> tuple[ParsedToken, bytes | None]:
    """:func:`split`, and the payload decoded too when it is canonical (else ``None``).

    One strict decode both checks the payload's alphabet and decodes it, so
    :meth:`JWSReader.read` reads a 1 kB payload once, not twice.
    """
    if type(token) is not str:  # the common case skips both isinstance checks
        if isinstance(token, bytes | bytearray):
            if len(token) > max_bytes:
                raise InvalidToken("token is larger than the size cap", code=ErrorCode.TOKEN_TOO_LARGE)
            try:
                token = bytes(token).decode("ascii")
            except UnicodeDecodeError:
                raise _malformed("token is not ASCII") from None
        if not isinstance(token, str):
            raise _malformed("token must be a string")
    if len(token) > max_bytes:
        raise InvalidToken("token is larger than the size cap", code=ErrorCode.TOKEN_TOO_LARGE)
    if not token.isascii():
        raise _malformed(_likely_mistake(token) or "token is not ASCII")
    raw = token.encode("ascii")
    # Fast path: two dots, a header of alphabet bytes, non-empty segments, and a
    # signature and payload that the strict decoder takes (which is also their
    # alphabet check). Anything else takes the step-by-step path, which words
    # the error as before; a payload that is base64url but not canonical is
    # left for decode_payload to refuse, after the header, as always.
    first = raw.find(b".")
    second = raw.find(b".", first + 1)
    if first < 0 or second < 0 or raw.find(b".", second + 1) >= 0:  # not exactly two dots
        return _split_checked(token), None
    if raw[:first].translate(None, _ALPHABET_BYTES):
        # A foreign byte in the (short) header: a pasted 'Bearer ', a space...
        return _split_checked(token), None
    if first == 0 or second == first + 1 or second == len(raw) - 1:
        raise _malformed("token has an empty segment")
    if (second - first - 1) & 3 == 1:
        raise _malformed("payload is not unpadded base64url")
    signature = _decode_strict(raw[second + 1 :])
    payload = _decode_strict(raw[first + 1 : second])
    if signature is None or payload is None:
        return _split_checked(token), None
    return _new_parsed_token((token[:first], token[first + 1 : second], raw[:second], signature)), payload


# A shell variable that reached us unexpanded ('$BITBUCKET_STEP_OIDC_TOKEN' in single quotes).
_UNEXPANDED_VARIABLE_RE = re.compile(r"\$\{?[A-Za-z_][A-Za-z0-9_]*\}?")
# ASCII quotes and the typographic ones a chat tool or word processor puts in.
_QUOTES = "\"'`\u201c\u201d\u2018\u2019"


def pasting_mistake(text: str) -> str | None:
    """Name the usual mistake when a token was pasted or passed wrongly, else ``None``.

    ``text`` is what arrived where a compact JWS was expected (the argument of
    ``verify()``, or the credentials after ``Bearer`` in an ``Authorization``
    header). The result is a phrase to put after "token" ("is wrapped in
    quotes; ..."); it never repeats ``text``, which may be a real token. The
    usual mistakes: the value is empty, still starts with the ``Bearer`` scheme
    (given twice), is wrapped in quotes, has whitespace around or inside it (a
    newline from a file or ``echo``, a wrapped line), is an unexpanded shell
    variable or a ``<placeholder>``, or starts with the header name.
    """
    if not text:
        return "is empty"
    lowered = text[:14].lower()
    if lowered[:7] == "bearer ":
        return "starts with 'Bearer ': pass the token alone, without the Authorization scheme"
    if lowered.startswith("authorization:"):
        return "starts with 'Authorization:': pass the token alone, without the header name and scheme"
    if text != text.strip():
        return "has leading or trailing whitespace (a newline from a file or echo?); strip it"
    if text[0] in _QUOTES or text[-1] in _QUOTES:
        return "is wrapped in quotes (copied from a shell or JSON string?); give it without them"
    if _UNEXPANDED_VARIABLE_RE.fullmatch(text):
        return (
            "is the name of a shell variable, not its value (single quotes stop the shell from "
            "expanding it; in Bitbucket Pipelines use \"$BITBUCKET_STEP_OIDC_TOKEN\" on a step "
            "with 'oidc: true')"
        )
    if text[0] == "<" and text[-1] == ">":
        return "is a placeholder ('<...>'), not a token; give the token itself"
    if any(ch.isspace() for ch in text):
        return "has whitespace inside it (a line wrapped when it was copied?); remove it"
    return None


def _likely_mistake(token: str) -> str | None:
    """Name the usual token-passing mistakes instead of a base64url complaint."""
    mistake = pasting_mistake(token)
    return None if mistake is None else "token " + mistake


def _split_checked(token: str) -> ParsedToken:
    # The general path for tokens that are not plain alphabet and two dots:
    # every check in order, each with its own message.
    mistake = _likely_mistake(token)
    if mistake is not None:
        raise _malformed(mistake)
    parts = token.split(".")
    if len(parts) != 3:
        if len(parts) == 5:
            raise _malformed("token is a JWE (five segments); only signed JWS tokens are accepted")
        raise _malformed("token must have exactly three dot-separated segments")
    header_seg, payload_seg, sig_seg = parts
    if not header_seg or not payload_seg or not sig_seg:
        raise _malformed("token has an empty segment")
    signing_input = token[: len(header_seg) + 1 + len(payload_seg)].encode("ascii")
    # One pass over header and payload together; only when it finds a foreign
    # character is the payload looked at on its own (a bad header is reported
    # by parse_header, as before).
    if signing_input.translate(None, _ALPHABET_AND_DOT) and not _B64URL_RE.fullmatch(payload_seg):
        raise _malformed("payload is not unpadded base64url")
    if len(payload_seg) & 3 == 1:
        raise _malformed("payload is not unpadded base64url")
    signature = b64url_decode(sig_seg, "signature")
    return ParsedToken(header_seg, payload_seg, signing_input, signature)


#: Header parameters that would make the token depend on something other than
#: the configured key set, or change how the payload is read (RFC 7515 4.1,
#: RFC 7797). They are refused outright, never followed.
_REFUSED_HEADERS = ("jku", "jwk", "x5u", "x5c", "crit", "b64", "cty", "enc", "zip")
_HMAC_OR_NONE = ("HS", "NONE")
MAX_KID_LENGTH = 256


@dataclass(frozen=True, slots=True)
class Header:
    """The two header values verification needs."""

    alg: str
    kid: str | None


def parse_header(segment: str, allowed_algorithms: frozenset[str]) -> Header:
    """Decode and check a protected header against the algorithm allowlist."""
    header = parse_json_object(b64url_decode(segment, "header"), "header")
    alg = header.get("alg")
    if not isinstance(alg, str):
        raise InvalidToken("header has no algorithm", code=ErrorCode.MALFORMED)
    if alg.strip().upper().startswith(_HMAC_OR_NONE) or alg not in allowed_algorithms:
        # 'none' in any spelling and every HMAC algorithm are refused whatever
        # the allowlist says: with a public key they are forgeable.
        raise InvalidToken(
            f"algorithm {alg[:20]!r} is not accepted (allowed: {', '.join(sorted(allowed_algorithms))})",
            code=ErrorCode.UNSUPPORTED_ALGORITHM,
        )
    for name in _REFUSED_HEADERS:
        if name in header:
            raise InvalidToken(
                f"header parameter {name!r} is not accepted", code=ErrorCode.UNSUPPORTED_HEADER
            )
    typ = header.get("typ")
    if typ is not None and (not isinstance(typ, str) or typ.lower() not in ("jwt", "application/jwt")):
        raise InvalidToken("header 'typ' must be JWT when present", code=ErrorCode.UNSUPPORTED_HEADER)
    kid = header.get("kid")
    # "kid": null is not "no kid": it would let a token opt into the single-key fallback.
    if "kid" in header and (
        not isinstance(kid, str) or not kid or len(kid) > MAX_KID_LENGTH or not kid.isprintable()
    ):
        raise InvalidToken("header 'kid' must be a short printable string", code=ErrorCode.MALFORMED)
    return Header(alg=alg, kid=kid)


class SignatureKey(Protocol):
    """What checks a signature (:class:`bbverify.jwk.VerifyingKey`)."""

    def verify(self, alg: str, signature: bytes, signing_input: bytes) -> None:
        """Raise ``InvalidToken`` (``bad_signature``) unless ``signature`` holds over ``signing_input``."""
        ...


class CompactJWS(NamedTuple):
    """A compact JWS read by :class:`JWSReader`: its parts, header and payload, not yet verified.

    ``payload`` is the decoded JSON object (``dict[str, Any]``); it may be
    read before the signature is checked only to decide whether the token is
    worth a key look-up (nothing in it is trusted until
    :meth:`verify_signature` has returned).
    """

    parsed: ParsedToken
    header: Header
    payload: dict[str, Any]

    def verify_signature(self, key: SignatureKey) -> None:
        """Check the signature with ``key``; raise ``InvalidToken`` (``bad_signature``) unless it holds."""
        parsed = self.parsed
        key.verify(self.header.alg, parsed.signature, parsed.signing_input)


class JWSReader:
    """Reads compact JWS tokens for one algorithm allowlist and size cap.

    Args:
        algorithms: the accepted ``alg`` values (``frozenset[str]``).
        max_bytes: the token size cap, in bytes.

    Bitbucket signs every token of a key set with one header, so parsed
    headers are remembered by their encoded segment (at most
    :attr:`MAX_HEADERS`, so hostile traffic cannot grow the memo).
    """

    MAX_HEADERS = 64

    __slots__ = ("_headers", "algorithms", "max_bytes")

    def __init__(self, algorithms: frozenset[str], max_bytes: int = DEFAULT_MAX_TOKEN_BYTES) -> None:
        self.algorithms = algorithms
        self.max_bytes = max_bytes
        self._headers: dict[str, Header] = {}

    def read(self, token: str | bytes) -> CompactJWS:
        """Split ``token``, check its header, parse its payload; raise ``InvalidToken`` otherwise."""
        parsed, payload = _split(token, self.max_bytes)
        header = self._header(parsed.header_segment)
        if payload is None:  # split took the step-by-step path: decode (or refuse) now, after the header
            payload = decode_payload(parsed)
        return CompactJWS(parsed, header, parse_json_object(payload, "payload"))

    def _header(self, segment: str) -> Header:
        header = self._headers.get(segment)
        if header is None:
            header = parse_header(segment, self.algorithms)
            if len(self._headers) < self.MAX_HEADERS:
                self._headers[segment] = header
        return header

    def __len__(self) -> int:
        """How many parsed headers are remembered."""
        return len(self._headers)
