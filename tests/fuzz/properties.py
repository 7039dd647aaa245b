"""Inputs and the oracle shared by the fuzz tests and the long run in ``fuzz/run.py``.

The oracle: ``verify()`` returns claims only for an unmodified valid token;
for anything else it raises a :class:`~bbverify.VerificationError` (never
the internal-error code ``verification_failed``, which would mean a bug was
caught by the last-resort handler) and nothing else ever escapes.

Why no mutation may verify: the signature covers the *encoded* header and
payload, and every segment must be canonical base64url, so any change to the
token's characters either changes the signed bytes or is refused as
non-canonical. There is no second spelling of a valid token.
"""

from __future__ import annotations

import json
import random

from hypothesis import strategies as st

from bbverify import StaticKeySet, VerificationError, Verifier
from bbverify.testing import FakeIssuer, b64url

__all__ = ["B64URL", "FuzzTarget", "arbitrary_inputs", "mutated_tokens", "token_shaped"]

B64URL = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


class FuzzTarget:
    """A verifier on static keys (no network per example) and the tokens it must accept."""

    def __init__(self, issuer: FakeIssuer) -> None:
        self.issuer = issuer
        self.kid = issuer.signing_key.kid
        # The token cache is off so every example walks the whole path.
        self.verifier = Verifier(
            issuer=issuer.issuer, audience=issuer.audience, keys=StaticKeySet(issuer.jwks()), cache_size=0
        )
        day = 24 * 3600.0
        self.valid: tuple[str, ...] = (
            issuer.mint(lifetime=day),
            issuer.mint(lifetime=day, environment_uuid=issuer.environment_uuid, branch=None),
            issuer.mint(
                lifetime=day, audience=["extra-audience", issuer.audience], extra={"pipelineRunUuid": "x"}
            ),
        )
        for token in self.valid:
            self.verifier.verify(token)  # fail fast if the target itself is broken
        self.runs = 0

    def check(self, candidate: object) -> None:
        """Run one input through ``verify()`` and assert the oracle."""
        self.runs += 1
        error: VerificationError | None = None
        try:
            claims = self.verifier.verify(candidate)  # type: ignore[arg-type]
        except VerificationError as exc:
            error = exc
        if error is not None:
            assert error.code != "verification_failed", f"internal error path reached for {candidate!r}"
            assert error.status_code in (401, 403, 503)
            return
        text = bytes(candidate).decode("ascii") if isinstance(candidate, bytes | bytearray) else candidate
        assert text in self.valid, f"a modified token verified: {candidate!r}"
        assert claims.workspace_uuid == self.issuer.workspace_uuid


def _decode(segment: str) -> bytes:
    import base64

    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


@st.composite
def _bit_flip(draw: st.DrawFn, token: str) -> str:
    parts = token.split(".")
    i = draw(st.integers(0, len(parts) - 1))
    raw = bytearray(_decode(parts[i]))
    if not raw:
        return token + "A"
    pos = draw(st.integers(0, len(raw) - 1))
    raw[pos] ^= 1 << draw(st.integers(0, 7))
    parts[i] = b64url(bytes(raw))
    return ".".join(parts)


@st.composite
def _char_replace(draw: st.DrawFn, token: str) -> str:
    pos = draw(st.integers(0, len(token) - 1))
    char = draw(st.sampled_from(B64URL + ".=+/ \n\t\x00é"))
    return token[:pos] + char + token[pos + 1 :]


@st.composite
def _segment_shuffle(draw: st.DrawFn, token: str) -> str:
    parts = token.split(".")
    picks = draw(st.lists(st.integers(0, len(parts) - 1), min_size=1, max_size=6))
    return ".".join(parts[i] for i in picks)


@st.composite
def _rejson(draw: st.DrawFn, token: str) -> str:
    """Re-encode the header or payload JSON with other whitespace and member order."""
    parts = token.split(".")
    i = draw(st.integers(0, min(1, len(parts) - 1)))
    obj = json.loads(_decode(parts[i]))
    if not isinstance(obj, dict):
        return token[::-1]
    items = list(obj.items())
    random.Random(draw(st.integers(0, 2**32))).shuffle(items)
    separators = draw(st.sampled_from([(",", ":"), (", ", ": "), (",", ": "), (" ,", " :")]))
    indent = draw(st.sampled_from([None, 0, 1, "\t"]))
    ensure_ascii = draw(st.booleans())
    text = json.dumps(dict(items), separators=separators, indent=indent, ensure_ascii=ensure_ascii)
    text = draw(st.sampled_from(["", " ", "\n"])) + text + draw(st.sampled_from(["", " ", "\n"]))
    parts[i] = b64url(text.encode())
    return ".".join(parts)


@st.composite
def _edit(draw: st.DrawFn, token: str) -> str:
    kind = draw(st.sampled_from(["truncate", "insert", "delete", "prefix", "suffix", "case"]))
    pos = draw(st.integers(0, len(token) - 1))
    junk = draw(st.text(alphabet=B64URL + ".=", min_size=1, max_size=8))
    if kind == "truncate":
        return token[:pos]
    if kind == "insert":
        return token[:pos] + junk + token[pos:]
    if kind == "delete":
        return token[:pos] + token[pos + draw(st.integers(1, 8)) :]
    if kind == "prefix":
        return junk + token
    if kind == "suffix":
        return token + junk
    return token[:pos] + token[pos].swapcase() + token[pos + 1 :]


@st.composite
def _splice(draw: st.DrawFn, tokens: tuple[str, ...]) -> str:
    a, b = draw(st.sampled_from(tokens)), draw(st.sampled_from(tokens))
    pa, pb = a.split("."), b.split(".")
    picks = draw(st.tuples(st.booleans(), st.booleans(), st.booleans()))
    return ".".join((pa if pick else pb)[i] for i, pick in enumerate(picks))


def mutated_tokens(tokens: tuple[str, ...]) -> st.SearchStrategy[object]:
    """Valid tokens changed in one or more ways, as str or bytes."""

    @st.composite
    def build(draw: st.DrawFn) -> object:
        token = draw(st.sampled_from(tokens))
        for _ in range(draw(st.integers(1, 3))):
            if not token:
                break
            mutate = draw(st.sampled_from([_bit_flip, _char_replace, _segment_shuffle, _rejson, _edit]))
            try:
                token = draw(mutate(token))
            except (ValueError, UnicodeDecodeError):
                # An earlier mutation left a segment that is no longer JSON/base64: edit it instead.
                token = draw(_edit(token)) if token else token
        if draw(st.booleans()):
            token = draw(_splice(tokens)) if draw(st.integers(0, 9)) == 0 else token
        return token.encode("utf-8", "surrogatepass") if draw(st.integers(0, 4)) == 0 else token

    return build()


def token_shaped() -> st.SearchStrategy[str]:
    """Strings that look like compact JWS (three-ish base64url segments)."""
    segment = st.text(alphabet=B64URL + "=+/", max_size=400)
    return st.lists(segment, min_size=1, max_size=6).map(".".join)


def _header_segment(kid: str | None) -> st.SearchStrategy[str]:
    scalars = st.none() | st.booleans() | st.integers() | st.text(max_size=12)
    values = (
        scalars | st.lists(scalars, max_size=3) | st.dictionaries(st.text(max_size=5), scalars, max_size=3)
    )
    kids = st.sampled_from([kid]) if kid else st.nothing()
    header_like = st.fixed_dictionaries(
        {
            "alg": st.sampled_from(["RS256", "none", "HS256", "ES256", "PS256", "rs256", ""])
            | st.text(max_size=6)
        },
        optional={
            "kid": kids | st.text(max_size=10) | values,
            "typ": st.sampled_from(["JWT", "jwt", "JOSE"]) | values,
            "crit": values,
            "jku": st.just("http://127.0.0.1:9/keys.json"),
            "jwk": values,
            "b64": st.booleans(),
        },
    )
    return (header_like | st.dictionaries(st.text(max_size=8), values, max_size=5)).map(
        lambda obj: b64url(json.dumps(obj).encode())
    )


def json_tokens(kid: str | None = None) -> st.SearchStrategy[str]:
    """A base64url JSON header (``kid`` among its kids) with an arbitrary payload and signature.

    The payload is only parsed after the signature holds, which a random
    signature never does, so it stays cheap random bytes.
    """
    return st.tuples(
        _header_segment(kid), st.binary(min_size=1, max_size=200), st.binary(min_size=1, max_size=300)
    ).map(lambda t: f"{t[0]}.{b64url(t[1])}.{b64url(t[2])}")


def arbitrary_inputs(kid: str | None = None) -> st.SearchStrategy[object]:
    """Anything at all: bytes, text, token-shaped text, JSON-headed tokens, and odd Python types."""
    return st.one_of(
        st.binary(max_size=1500),
        st.text(max_size=1500),
        token_shaped(),
        json_tokens(kid),
        st.none() | st.integers() | st.floats() | st.lists(st.text(max_size=5), max_size=3),
    )
