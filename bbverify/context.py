"""The request context: what a rule may know about one request besides the token.

One :class:`RequestContext` is built per request by the adapter layer (or by
:meth:`bbverify.Verifier.verify` from its ``client_ip=``, ``method=`` and
``path=`` keywords) and handed to every rule. The client IP is parsed here,
once: rules read :attr:`RequestContext.client_address`, an
:mod:`ipaddress` object, and never parse the text again.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass, field

from .addresses import IPAddress, parse_client_ip

__all__ = ["RequestContext"]

_ADDRESS_TYPES = (ipaddress.IPv4Address, ipaddress.IPv6Address)


@dataclass(frozen=True, slots=True, init=False)
class RequestContext:
    """What a rule may know about the request besides the token.

    ``client_ip`` is the address the adapter resolved (the socket peer, or
    the trusted-proxy walk of ``X-Forwarded-For``): a ``str``, an
    :class:`ipaddress.IPv4Address` / :class:`~ipaddress.IPv6Address`, or
    ``None`` when unknown. It is parsed once, when the context is built
    (strictly, see :func:`bbverify.addresses.parse_client_ip`; an IPv4-mapped
    IPv6 address becomes the IPv4 address):

    * ``client_ip`` keeps the text form (``str(address)`` when an address
      object was given),
    * ``client_address`` is the parsed address object, ``None`` when the
      client IP is unknown or malformed,
    * ``client_ip_error`` says why a client IP that was given could not be
      parsed (``None`` otherwise); rules deny such a request with
      ``client_ip_invalid`` rather than treating it as unknown.

    ``now`` is the verifier's clock, in seconds since the epoch (the verifier
    stamps its own reading on the context it hands to the rules). ``method``
    and ``path`` are the HTTP request method and routing path, when an
    adapter verified a request.
    """

    client_ip: str | None
    now: float
    method: str | None
    path: str | None
    # Derived from client_ip by __init__, so not arguments of their own:
    # dataclasses.replace(context, client_ip=...) parses the new address.
    client_address: IPAddress | None = field(init=False)
    client_ip_error: str | None = field(init=False, compare=False, repr=False)

    def __init__(
        self,
        client_ip: str | IPAddress | None,
        now: float,
        method: str | None = None,
        path: str | None = None,
    ) -> None:
        address: IPAddress | None = None
        error: str | None = None
        text: str | None
        if client_ip is None or isinstance(client_ip, str):
            text = client_ip
            if client_ip is not None:
                try:
                    address = parse_client_ip(client_ip)
                except ValueError as exc:
                    error = str(exc)
        elif isinstance(client_ip, _ADDRESS_TYPES):
            text = str(client_ip)
            address = client_ip
            if isinstance(client_ip, ipaddress.IPv6Address):
                if client_ip.scope_id is not None:
                    # Refused as its text form is: a scoped (link-local) address is
                    # never admitted, whichever way it arrives.
                    address, error = None, _parse_error(text)
                elif client_ip.ipv4_mapped is not None:
                    address = client_ip.ipv4_mapped
        else:
            # Not a client IP at all: kept as given so the IP rule refuses it as malformed.
            text = client_ip
            error = f"client IP must be a string, not {type(client_ip).__name__}"
        # Straight into the slots: the frozen class's __setattr__ refuses, and
        # object.__setattr__ would cost twice as much (one context per request).
        _set_client_ip(self, text)
        _set_now(self, now)
        _set_method(self, method)
        _set_path(self, path)
        _set_client_address(self, address)
        _set_client_ip_error(self, error)

    def at(self, now: float) -> RequestContext:
        """This context with ``now`` (seconds since the epoch) instead; the client IP is not parsed again."""
        if now == self.now:
            return self
        copy = object.__new__(RequestContext)
        _set_client_ip(copy, self.client_ip)
        _set_now(copy, now)
        _set_method(copy, self.method)
        _set_path(copy, self.path)
        _set_client_address(copy, self.client_address)
        _set_client_ip_error(copy, self.client_ip_error)
        return copy


def _parse_error(text: str) -> str | None:
    """Why :func:`~bbverify.addresses.parse_client_ip` refuses ``text`` (``None`` if it does not)."""
    try:
        parse_client_ip(text)
    except ValueError as exc:
        return str(exc)
    return None


def _slot_setter(name: str) -> Callable[[RequestContext, object], None]:
    setter: Callable[[RequestContext, object], None] = vars(RequestContext)[name].__set__
    return setter


_set_client_ip = _slot_setter("client_ip")
_set_now = _slot_setter("now")
_set_method = _slot_setter("method")
_set_path = _slot_setter("path")
_set_client_address = _slot_setter("client_address")
_set_client_ip_error = _slot_setter("client_ip_error")
