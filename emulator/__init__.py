"""SEZ emulator: the "hardware" of the zone (QEMU process, QMP, fuses, image, factory).

Never imports host_driver.
"""

import logging

logging.getLogger(__name__).addHandler(logging.NullHandler())
