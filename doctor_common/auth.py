"""Who is calling: bearer tokens mapped to a project, the admin role, or an agent's host.

Identity never comes from a field the client fills in (DESIGN principle 6):
the token in the ``authorization`` metadata decides it, and for an agent its
verified client certificate too (``agent_identity``; docs/tls.md): either
suffices, and when both come they must name the same host.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import grpc

from doctor_common.grpcutil import bearer_token
from doctor_common.tls import peer_dns_names


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


class TokenAuth:
    """Tokens are kept as SHA-256 digests and compared in constant time."""

    def __init__(self, consumers: dict[str, Principal], agents: dict[str, str], allow_anonymous_agents: bool = False) -> None:
        self._consumers = {_digest(t): p for t, p in consumers.items()}
        self._agents = {_digest(t): h for t, h in agents.items()}
        self.allow_anonymous_agents = allow_anonymous_agents
        self.require_agent_cert = False  # [tls] require_client_cert_for: an agent without a certificate is refused

    @staticmethod
    def credential(context: grpc.aio.ServicerContext) -> bytes:
        """What identifies the caller's token without keeping it (its digest; empty without a token)."""
        token = bearer_token(context)
        return _digest(token) if token is not None else b""

    def still_consumer(self, credential: bytes, principal: Principal) -> bool:
        """The token behind ``credential`` still stands for exactly ``principal`` (after a reload)."""
        return self._consumers.get(credential) == principal

    def still_agent(self, credential: bytes, host: str) -> bool:
        return self._agents.get(credential) == host

    def replace(self, other: "TokenAuth") -> None:
        """Take another configuration's tokens (a reload): servicers holding this object see them at once."""
        self._consumers, self._agents = other._consumers, other._agents
        self.allow_anonymous_agents = other.allow_anonymous_agents

    @staticmethod
    def _lookup(table: dict[bytes, object], token: str) -> object | None:
        return table.get(_digest(token))  # keyed by SHA-256: a lookup's timing says nothing usable of the token

    async def consumer(self, context: grpc.aio.ServicerContext) -> Principal:
        token = bearer_token(context)
        if token is None:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED,
                                "missing credentials: send metadata 'authorization: Bearer <token>'")
        principal = self._lookup(self._consumers, token)  # type: ignore[arg-type]
        if principal is None:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "unknown token: ask the operator for a consumer token")
        return principal  # type: ignore[return-value]

    async def admin(self, context: grpc.aio.ServicerContext) -> Principal:
        principal = await self.consumer(context)
        if not principal.admin:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, "this call needs an administrator token")
        return principal

    async def agent_host(self, context: grpc.aio.ServicerContext) -> str | None:
        """The host an agent token stands for; None when anonymous agents are allowed and no token came."""
        token = bearer_token(context)
        if token is None:
            if self.allow_anonymous_agents:
                return None
            await context.abort(grpc.StatusCode.UNAUTHENTICATED,
                                "missing agent credentials: set [agent] token in the agent's config")
        host = self._lookup(self._agents, token)  # type: ignore[arg-type]
        if host is None:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "unknown agent token")
        return host  # type: ignore[return-value]

    async def agent_identity(self, context: grpc.aio.ServicerContext) -> AgentIdentity | None:
        """Who this agent is: its client certificate's DNS names, its token's host, or both (then they must agree;
        a token that matches none of the certificate's names is PERMISSION_DENIED). None: anonymous, allowed."""
        names = peer_dns_names(context)
        if names is None:
            if self.require_agent_cert:
                await context.abort(grpc.StatusCode.UNAUTHENTICATED,
                                    "this inspector requires agents to present a client certificate: set ca_file, "
                                    "cert_file and key_file in the agent's [agent] table and connect to an address "
                                    "that asks for it ([tls] client_cert_listen; docs/tls.md)")
            host = await self.agent_host(context)
            return None if host is None else AgentIdentity(frozenset({host}), "token")
        if not names:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED,
                                "this agent's certificate has no DNS subjectAltName: it must name the agent's host "
                                "(docs/tls.md)")
        token = bearer_token(context)
        if token is None:
            return AgentIdentity(names, "certificate")
        host = self._lookup(self._agents, token)
        if host is None:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "unknown agent token")
        if str(host).lower() not in names:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED,
                                f"this agent's token belongs to host {host!r} but its certificate names "
                                f"{', '.join(sorted(names))}: token and certificate must name the same host")
        return AgentIdentity(frozenset({str(host)}), "certificate and token")
