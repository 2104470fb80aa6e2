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
    """The adapter error for ``exc`` raised while doing ``what``; None when it is not an SDK error.

    The SDK wraps keystoneauth's errors (authentication, discovery) in a bare
    SDKException: the most telling error of the cause chain decides.
    """
    from keystoneauth1 import exceptions as ks
    from openstack import exceptions as sdk

    chain: list[BaseException] = []
    link: BaseException | None = exc
    while link is not None and len(chain) < 10:
        chain.append(link)
        link = link.__cause__ or link.__context__
    for e in chain:
        if isinstance(e, sdk.HttpException) and e.status_code:
            return http_error(what, policy, e.status_code, e.request_id, e.details or e.message,
                              isinstance(e, sdk.NotFoundException))
        if isinstance(e, ks.HttpError) and e.http_status:
            return http_error(what, policy, e.http_status, e.request_id, e.message)
        if isinstance(e, (ks.RetriableConnectionFailure, ks.UnknownConnectionError)):  # ConnectFailure, ConnectTimeout
            return BackendUnavailable(f"{what}: cannot reach the cloud: {e}")
    if isinstance(exc, sdk.NotFoundException):  # raised by the SDK itself, without a response
        return NotFound(f"{what}: {exc}")
    if isinstance(exc, (sdk.SDKException, ks.ClientException)):
        # configuration (clouds.yaml, catalog, microversion) problems and the SDK's own refusals
        return ControllerError(f"{what}: {exc}")
    return None


def http_error(what: str, policy: str | None, status: int, request_id: str | None, detail: str,
               not_found: bool = False) -> ControllerError:
    """An HTTP error status as the adapter's error (the SDK's and the raw fault path's, ``_openstack_http``)."""
    if status == 404 or not_found:
        return NotFound(f"{what}: not found: {detail}", status=status, request_id=request_id)
    if status in _UNAVAILABLE:
        return BackendUnavailable(f"{what}: the cloud is unavailable: {detail}", status=status, request_id=request_id)
    if status == 403 and policy:
        return ControllerError(f"{what}: forbidden by policy; the account needs {policy} (or the admin role)",
                               status=status, request_id=request_id)
    return ControllerError(f"{what}: {detail}", status=status, request_id=request_id)


__all__ = ["http_error", "translate"]
