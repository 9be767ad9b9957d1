"""SEZ firmware: everything that runs inside the zone (the guest), one package per process.

``abi``      the device's contract with the host (wire format, ops, errors, claims, DICE):
             the only part the host side imports
``pid1``     PID 1: /init, the hardware's hand-over (fw_cfg), the supervisor
``layer0``   the key keeper: identity, BBRAM, every signature (holds the keys)
``monitor``  layer 1: serves the control channel, the zone's state, jobs, schedules, audit
``runner``   forks one confined process per job; what runs in that process
``runtime``  what every process may use: console log, reactor, port, sockets between processes

docs/architecture.md describes the processes, the trust boundary and a request's path.
Nothing here imports ``emulator`` or ``host_driver``.
"""

FIRMWARE_VERSION = "0.1.0"
