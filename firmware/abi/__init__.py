"""The device's contract: everything the zone and the host must agree on, in one place.

``wire``      the channel's frames and messages      ``ops``       the operation names
``errors``    error codes, one exception per code    ``jobs``      job states and limits
``claims``    claim keys every signed message shares ``evidence``  the EAT the zone attests with
``receipt``   a job's signed receipt                  ``audit``     the audit log's entries
``applet``    applet packages (measured, signed)      ``schedule``  owner-signed schedules
``cose``      COSE_Sign1 (ES384)                      ``keys``      how a public key is named
``dice``      the DICE derivations (factory, layer 0 and the verifier run the same code)
``device``    port names, fw_cfg items, the BBRAM disk: the emulated hardware

The host side (emulator, host_driver) imports nothing else of the firmware. Every module here
runs in the guest and on the host: standard library, cbor2, cryptography and pyasn1 only.
"""

from .errors import Code, SezError, ZoneError, error_for_code
from .wire import MAX_PAYLOAD, VERSION, Fault, Frame, FrameDecoder, Kind

__all__ = ["Code", "SezError", "ZoneError", "error_for_code", "MAX_PAYLOAD", "VERSION", "Fault",
           "Frame", "FrameDecoder", "Kind"]
