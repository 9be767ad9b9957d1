"""SEZ firmware: everything that runs inside the zone (the guest).

``firmware.abi`` is the device's contract (wire format, error codes) that the host driver
imports; the rest runs only in the guest. Nothing here imports ``emulator`` or ``host_driver``.
"""

FIRMWARE_VERSION = "0.1.0"
