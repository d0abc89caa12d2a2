"""TLS client contexts for a libpq ``sslmode``: for the code that does TLS itself rather than through
libpq (:mod:`lakebase.asyncpg`, the local proxy's :mod:`lakebase.proxy.upstream`).

As libpq: ``require`` encrypts without verifying the server (and, like libpq, verifies the chain as
``verify-ca`` does when a root certificate is given); ``verify-ca`` checks the chain against
``sslrootcert`` (the settings' or ``PGSSLROOTCERT``; without one, the system's default CAs);
``verify-full`` the chain and the host name. A mode that allows plaintext is refused.
"""

from __future__ import annotations

import ssl

from ._adapter import require_tls

_contexts: dict[tuple[str, str | None, bool], ssl.SSLContext] = {}


def client_context(sslmode: str, sslrootcert: str | None = None, *, check_hostname: bool = True) -> ssl.SSLContext:
    """The :class:`ssl.SSLContext` for ``sslmode`` (cached; reads ``sslrootcert`` once).

    ``check_hostname=False``: for ``verify-full`` the caller checks the host name itself after the
    handshake (OpenSSL's check is left off); the other modes never check it.
    """
    mode = require_tls(sslmode, where=None, fix="use sslmode=require (or verify-full with sslrootcert)")
    if mode == "require" and sslrootcert:
        mode = "verify-ca"
    key = (mode, sslrootcert, check_hostname)
    context = _contexts.get(key)
    if context is None:
        if mode == "require":
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        else:
            context = ssl.create_default_context(cafile=sslrootcert)
            context.check_hostname = check_hostname and mode == "verify-full"
        context = _contexts.setdefault(key, context)
    return context
