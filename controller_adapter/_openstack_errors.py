"""openstacksdk and keystoneauth errors translated into the adapter's own, at the boundary.

    openstack.exceptions.NotFoundException (404)        -> NotFound
    openstack.exceptions.HttpException 502/503/504      -> BackendUnavailable  (retried when the call is safe)
    openstack.exceptions.HttpException 403              -> ControllerError naming the policy rule needed
    openstack.exceptions.HttpException (any other)      -> ControllerError(status=, request_id=)
    keystoneauth1 ConnectFailure / ConnectTimeout / ... -> BackendUnavailable
    keystoneauth1 HttpError (authentication, discovery) -> ControllerError / BackendUnavailable (5xx)
    openstack / keystoneauth configuration errors       -> ControllerError

Everything else (programming errors) propagates unchanged. The imports are
lazy: this runs in the worker thread that already imported openstacksdk.
"""

from __future__ import annotations

from controller_adapter.base import BackendUnavailable, ControllerError, NotFound

_UNAVAILABLE = (502, 503, 504)


def translate(exc: BaseException, what: str, policy: str | None = None) -> ControllerError | None:
    """The adapter error for ``exc`` raised while doing ``what``; None when it is not an SDK error."""
    from keystoneauth1 import exceptions as ks
    from openstack import exceptions as sdk

    if isinstance(exc, sdk.HttpException):
        status, request_id = exc.status_code, exc.request_id
        detail = exc.details or exc.message
        if status == 404 or isinstance(exc, sdk.NotFoundException):
            return NotFound(f"{what}: not found: {detail}", status=status, request_id=request_id)
        if status in _UNAVAILABLE:
            return BackendUnavailable(f"{what}: the cloud is unavailable: {detail}", status=status, request_id=request_id)
        if status == 403 and policy:
            return ControllerError(f"{what}: forbidden by policy; the account needs {policy} (or the admin role)",
                                   status=status, request_id=request_id)
        return ControllerError(f"{what}: {detail}", status=status, request_id=request_id)
    if isinstance(exc, ks.RetriableConnectionFailure):  # ConnectFailure, ConnectTimeout, ...
        return BackendUnavailable(f"{what}: cannot reach the cloud: {exc}")
    if isinstance(exc, ks.HttpError):
        cls = BackendUnavailable if exc.http_status in _UNAVAILABLE else ControllerError
        return cls(f"{what}: {exc.message}", status=exc.http_status, request_id=exc.request_id)
    if isinstance(exc, ks.UnknownConnectionError):
        return BackendUnavailable(f"{what}: cannot reach the cloud: {exc}")
    if isinstance(exc, (sdk.SDKException, ks.ClientException)):
        # configuration (clouds.yaml, catalog, microversion) problems and the SDK's own refusals
        return ControllerError(f"{what}: {exc}")
    return None


__all__ = ["translate"]
