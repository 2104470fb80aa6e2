"""Who is calling: bearer tokens mapped to a project, the admin role, or an agent's host.

Identity never comes from a field the client fills in (DESIGN principle 6):
the token in the ``authorization: Bearer`` (or, for consumers, ``x-auth-token``)
metadata decides it. A consumer's token is looked up among the static tokens of
the configuration first; when ``[auth.keystone]`` is on, any other token is
validated by Keystone (``doctor_common.keystone``): its project and roles decide.
For an agent its verified client certificate counts too (``agent_identity``;
docs/tls.md): either suffices, and when both come they must name the same host.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass

import grpc

from doctor_common.audit import Audit
from doctor_common.grpcutil import bearer_token
from doctor_common.keystone import KeystoneUnavailable, KeystoneValidator, TokenInfo

KEYSTONE_PREFIX = "keystone:"  # the names of principals Keystone vouches for (static names may not take it)
from doctor_common.grpc_tls import peer_dns_names


@dataclass(frozen=True)
class AgentIdentity:
    """The hosts an agent may speak for, and what said so ("certificate", "token", or both)."""
    hosts: frozenset[str]
    via: str

    def allows(self, host: str) -> bool:
        # DNS names are compared without regard to case; a token's host exactly, as always
        return host in self.hosts or (self.via != "token" and host.lower() in self.hosts)


@dataclass(frozen=True)
class Principal:
    name: str
    project: str | None = None
    admin: bool = False

    def owns(self, project_id: str) -> bool:
        return self.admin or (self.project is not None and self.project == project_id)


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def consumer_token(context: grpc.aio.ServicerContext) -> tuple[str | None, bool]:
    """(the token, whether two different ones came): ``authorization: Bearer`` first, else ``x-auth-token`` (the
    header OpenStack clients send a Keystone token in)."""
    bearer = bearer_token(context)
    other = None
    for key, value in context.invocation_metadata() or ():
        if key == "x-auth-token" and isinstance(value, str) and value.strip():
            other = value.strip()
    if bearer is not None and other is not None and bearer != other:
        return bearer, True
    return bearer if bearer is not None else other, False


def keystone_principal(info: TokenInfo, admin_roles: tuple[str, ...]) -> Principal:
    """A Keystone user in a project; admin when one of its roles there is one of ``admin_roles``."""
    admin = any(r.lower() in info.roles for r in admin_roles)
    return Principal(name=f"{KEYSTONE_PREFIX}{info.user_name}@{info.project_name}", project=info.project_id,
                     admin=admin)


class TokenAuth:
    """Tokens are kept as SHA-256 digests and compared in constant time."""

    def __init__(self, consumers: dict[str, Principal], agents: dict[str, str], allow_anonymous_agents: bool = False,
                 keystone: KeystoneValidator | None = None) -> None:
        self._consumers = {_digest(t): p for t, p in consumers.items()}
        self._agents = {_digest(t): h for t, h in agents.items()}
        self.allow_anonymous_agents = allow_anonymous_agents
        self.keystone = keystone
        self.audit = Audit()  # the daemon sets its own: rejected clients go to its audit trail

    async def _reject(self, context: grpc.aio.ServicerContext, code: grpc.StatusCode, kind: str, why: str) -> None:
        """Audit the refusal (never the token), then abort with ``why``."""
        self.audit.rejected(_peer(context), kind, why)
        await context.abort(code, why)
        self.require_agent_cert = False  # [tls] require_client_cert_for: an agent without a certificate is refused

    @staticmethod
    def credential(context: grpc.aio.ServicerContext) -> bytes:
        """What identifies the caller's consumer token without keeping it (its digest; empty without a token)."""
        token, _ = consumer_token(context)
        return _digest(token) if token is not None else b""

    def still_consumer(self, credential: bytes, principal: Principal) -> bool:
        """The token behind ``credential`` still stands for exactly ``principal`` (after a reload).

        A Keystone token is judged by what Keystone last said of it, however long ago (the stream holds no
        token to ask again): revoked, expired, or no longer admin under the reloaded ``admin_roles`` ends it;
        so does Keystone turned off or pointed elsewhere, or nothing remembered of it (evicted from the cache):
        the consumer subscribes again, is validated afresh, and resumes from its cursor."""
        static = self._consumers.get(credential)
        if static is not None or self.keystone is None or not principal.name.startswith(KEYSTONE_PREFIX):
            return static == principal
        info = self.keystone.last_known(credential)
        if not isinstance(info, TokenInfo) or info.expires_at <= time.time():
            return False
        return keystone_principal(info, self.keystone.settings.admin_roles) == principal

    async def recheck(self, credential: bytes, principal: Principal) -> bool:
        """Whether a stream opened with a Keystone token may go on: asks Keystone again (through the cache, so at
        most once per cache_s per token). False once the token is revoked, expired or stands for another
        principal; True for other streams, and while Keystone cannot tell (an outage ends no stream)."""
        keystone = self.keystone
        if keystone is None or credential in self._consumers or not principal.name.startswith(KEYSTONE_PREFIX):
            return True  # static tokens, and Keystone turned off, are the reload's to judge
        token = keystone.token_of(credential)
        if token is None:
            return self.still_consumer(credential, principal)  # known refused, or forgotten: nothing to ask with
        try:
            info = await keystone.validate(token, credential)
        except KeystoneUnavailable:
            return True
        return info is not None and keystone_principal(info, keystone.settings.admin_roles) == principal

    def still_agent(self, credential: bytes, host: str) -> bool:
        return self._agents.get(credential) == host

    def replace(self, other: "TokenAuth") -> None:
        """Take another configuration's tokens (a reload): servicers holding this object see them at once."""
        self._consumers, self._agents = other._consumers, other._agents
        self.allow_anonymous_agents = other.allow_anonymous_agents
        mine, theirs = self.keystone, other.keystone
        if mine is not None and theirs is not None and mine.settings.source == theirs.settings.source:
            mine.reconfigure(theirs.settings)  # the same Keystone: keep what it said (and its session)
        else:
            self.keystone = theirs
            if mine is not None:
                mine.close()

    def close(self) -> None:
        if self.keystone is not None:
            self.keystone.close()

    @staticmethod
    def _lookup(table: dict[bytes, object], token: str) -> object | None:
        return table.get(_digest(token))  # keyed by SHA-256: a lookup's timing says nothing usable of the token

    def agent_for(self, token: str) -> str | None:
        """The host an agent token stands for; None when it is no agent's (a transport without gRPC metadata)."""
        return self._lookup(self._agents, token)  # type: ignore[return-value]

    def consumer_for(self, token: str) -> Principal | None:
        """The consumer a token stands for; None when it is no consumer's."""
        return self._lookup(self._consumers, token)  # type: ignore[return-value]

    async def consumer(self, context: grpc.aio.ServicerContext) -> Principal:
        token, twice = consumer_token(context)
        if token is None:
            await self._reject(context, grpc.StatusCode.UNAUTHENTICATED, "missing_token",
                               "missing credentials: send metadata 'authorization: Bearer <token>'" +
                               (" or 'x-auth-token: <Keystone token>'" if self.keystone else ""))
        if twice:
            await self._reject(context, grpc.StatusCode.UNAUTHENTICATED, "two_tokens",
                               "'authorization' and 'x-auth-token' carry different tokens: send one")
        key = _digest(token)  # type: ignore[arg-type]
        principal = self._consumers.get(key)  # keyed by SHA-256: a lookup's timing says nothing usable of the token
        if principal is not None:
            return principal
        if self.keystone is None:
            await self._reject(context, grpc.StatusCode.UNAUTHENTICATED, "unknown_token",
                               "unknown token: ask the operator for a consumer token")
        keystone = self.keystone
        assert keystone is not None
        failure = ""
        try:
            info = await keystone.validate(token, key)  # type: ignore[arg-type]
        except KeystoneUnavailable as exc:
            info, failure = None, str(exc)
        if failure:
            await context.abort(grpc.StatusCode.UNAVAILABLE,
                                f"cannot validate the token now: Keystone is unavailable ({failure}); retry later")
        if info is None:
            await self._reject(context, grpc.StatusCode.UNAUTHENTICATED, "unknown_token",
                               "unknown token: neither a consumer token of this inspector nor a Keystone token "
                               "Keystone accepts (unknown, expired or revoked): get a new one")
        assert info is not None
        if info.project_id is None:
            await self._reject(context, grpc.StatusCode.PERMISSION_DENIED, "unscoped_token",
                               "the Keystone token is not scoped to a project: get a project-scoped token "
                               "(e.g. openstack --os-project-name <project> token issue)")
        return keystone_principal(info, keystone.settings.admin_roles)

    async def admin(self, context: grpc.aio.ServicerContext) -> Principal:
        principal = await self.consumer(context)
        if not principal.admin:
            await self._reject(context, grpc.StatusCode.PERMISSION_DENIED, "not_admin",
                               f"this call needs an administrator token ({principal.name} is not one)")
        return principal

    async def agent_host(self, context: grpc.aio.ServicerContext) -> str | None:
        """The host an agent token stands for; None when anonymous agents are allowed and no token came."""
        token = bearer_token(context)
        if token is None:
            if self.allow_anonymous_agents:
                return None
            await self._reject(context, grpc.StatusCode.UNAUTHENTICATED, "missing_token",
                               "missing agent credentials: set [agent] token in the agent's config")
        host = self._lookup(self._agents, token)  # type: ignore[arg-type]
        if host is None:
            await self._reject(context, grpc.StatusCode.UNAUTHENTICATED, "unknown_token", "unknown agent token")
        return host  # type: ignore[return-value]

    async def agent_identity(self, context: grpc.aio.ServicerContext) -> AgentIdentity | None:
        """Who this agent is: its client certificate's DNS names, its token's host, or both (then they must agree;
        a token that matches none of the certificate's names is PERMISSION_DENIED). None: anonymous, allowed."""
        names = peer_dns_names(context)
        if names is None:
            if self.require_agent_cert:
                await self._reject(context, grpc.StatusCode.UNAUTHENTICATED, "missing_certificate",
                                   "this inspector requires agents to present a client certificate: set ca_file, "
                                    "cert_file and key_file in the agent's [agent] table and connect to an address "
                                    "that asks for it ([tls] client_cert_listen; docs/tls.md)")
            host = await self.agent_host(context)
            return None if host is None else AgentIdentity(frozenset({host}), "token")
        if not names:
            await self._reject(context, grpc.StatusCode.PERMISSION_DENIED, "certificate_without_name",
                               "this agent's certificate has no DNS subjectAltName: it must name the agent's host "
                                "(docs/tls.md)")
        token = bearer_token(context)
        if token is None:
            return AgentIdentity(names, "certificate")
        host = self._lookup(self._agents, token)
        if host is None:
            await self._reject(context, grpc.StatusCode.UNAUTHENTICATED, "unknown_token", "unknown agent token")
        if str(host).lower() not in names:
            await self._reject(context, grpc.StatusCode.PERMISSION_DENIED, "wrong_host",
                               f"this agent's token belongs to host {host!r} but its certificate names "
                                f"{', '.join(sorted(names))}: token and certificate must name the same host")
        return AgentIdentity(frozenset({str(host)}), "certificate and token")


def _peer(context: grpc.aio.ServicerContext) -> str:
    try:
        return str(context.peer())
    except Exception:  # noqa: BLE001 - a test double or a closed call: the reason is what matters
        return ""
