"""Who is calling: bearer tokens mapped to a project, the admin role, or an agent's host.

Identity never comes from a field the client fills in (DESIGN principle 6):
the token in the ``authorization`` metadata decides it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import grpc

from doctor_common.audit import Audit
from doctor_common.grpcutil import bearer_token


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
        self.audit = Audit()  # the daemon sets its own: rejected clients go to its audit trail

    async def _reject(self, context: grpc.aio.ServicerContext, code: grpc.StatusCode, kind: str, why: str) -> None:
        """Audit the refusal (never the token), then abort with ``why``."""
        self.audit.rejected(_peer(context), kind, why)
        await context.abort(code, why)

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
            await self._reject(context, grpc.StatusCode.UNAUTHENTICATED, "missing_token",
                               "missing credentials: send metadata 'authorization: Bearer <token>'")
        principal = self._lookup(self._consumers, token)  # type: ignore[arg-type]
        if principal is None:
            await self._reject(context, grpc.StatusCode.UNAUTHENTICATED, "unknown_token",
                               "unknown token: ask the operator for a consumer token")
        return principal  # type: ignore[return-value]

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


def _peer(context: grpc.aio.ServicerContext) -> str:
    try:
        return str(context.peer())
    except Exception:  # noqa: BLE001 - a test double or a closed call: the reason is what matters
        return ""
