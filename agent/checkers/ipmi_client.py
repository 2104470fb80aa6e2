"""Sensors and the SEL through pyghmi's session, SDR and SEL decoders, without ``pyghmi.ipmi.command``.

``Command`` imports every vendor's OEM module (Lenovo IMM, Redfish, web
clients, dateutil: about 100 modules and 5.6 MB of the agent's RSS) to pick
an OEM handler for the BMC. The agent reads standard SDR sensors and SEL
entries, which pyghmi decodes with its generic OEM handler, so it drives
pyghmi's own pieces through the small surface they use of ``Command``
(``raw_command``, ``xraw_command``, ``get_event_constants``, ``init_sdr``,
``_oem``). The inspector's fencing keeps using ``Command``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pyghmi.exceptions as pyghmi_exc
from pyghmi.ipmi import events, sdr
from pyghmi.ipmi.oem.generic import OEMHandler

SENSOR_ABSENT = 203  # "sensor does not exist": an optional device that is not fitted


class SensorClient:
    """One BMC session; used by one thread at a time (the checker's worker)."""

    def __init__(self, session: Any) -> None:
        self.ipmi_session = session  # the attribute doctor_common.ipmi_session.discard() looks for
        self._oem = OEMHandler(None, None)
        self._sdr: Any = None

    @classmethod
    def lan(cls, address: str, port: int, username: str, password: str) -> "SensorClient":
        """Log in over RMCP+ (pyghmi's session brings ``cryptography`` for its AES, so only the LAN loads it)."""
        from doctor_common.ipmi_session import credentials, lan_sessions

        user, secret = credentials(username, password)
        return cls(lan_sessions().Session(bmc=address, userid=user, password=secret, port=port))

    @classmethod
    def local(cls, device: str = "/dev/ipmi0") -> "SensorClient":
        """The host's own BMC through the kernel's IPMI device (ipmi_devintf)."""
        from pyghmi.ipmi.private import localsession

        return cls(localsession.Session(devnode=device))

    # -- what pyghmi's SDR and SEL code call on their "ipmicmd" --
    def raw_command(self, netfn: int, command: int, bridge_request: Any = (), data: Any = (),
                    delay_xmit: Any = None, retry: bool = True, timeout: Any = None,
                    rslun: int = 0) -> dict[str, Any]:
        return self.ipmi_session.raw_command(netfn=netfn, command=command, bridge_request=bridge_request,
                                             data=data, delay_xmit=delay_xmit, retry=retry, timeout=timeout,
                                             rslun=rslun)

    def xraw_command(self, netfn: int, command: int, bridge_request: Any = (), data: Any = (),
                     delay_xmit: Any = None, retry: bool = True, timeout: Any = None,
                     rslun: int = 0) -> dict[str, Any]:
        rsp = self.raw_command(netfn, command, bridge_request, data, delay_xmit, retry, timeout, rslun)
        if "error" in rsp:
            raise pyghmi_exc.IpmiException(rsp["error"], rsp["code"])
        rsp["data"] = memoryview(rsp["data"])
        return rsp

    def get_event_constants(self) -> Any:
        return self._oem.get_oem_event_const()

    def init_sdr(self) -> Any:
        if self._sdr is None:
            self._sdr = sdr.SDR(self, None)
        return self._sdr

    # -- what the checker uses --
    def get_sensor_data(self) -> Iterator[Any]:
        """Every SDR sensor's current reading (pyghmi ``SensorReading``), as ``Command.get_sensor_data``."""
        repo = self.init_sdr()
        for number in repo.get_sensor_numbers():
            sensor = repo.sensors[number]
            rsp = self.raw_command(netfn=4, command=0x2D, rslun=sensor.sensor_lun, data=(sensor.sensor_number,))
            if "error" in rsp:
                if rsp["code"] == SENSOR_ABSENT:
                    continue
                raise pyghmi_exc.IpmiException(rsp["error"], code=rsp["code"])
            yield sensor.decode_sensor_reading(self, rsp["data"])

    def get_event_log(self) -> list[dict[str, Any]]:
        """The whole SEL, decoded against the SDR (as ``Command.get_event_log``)."""
        return events.EventHandler(self.init_sdr(), self).fetch_sel(self)
