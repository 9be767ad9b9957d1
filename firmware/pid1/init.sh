#!/bin/sh
# /init of the zone image: the kernel runs this as PID 1. It mounts the kernel file systems
# (cgroup2 too: the runner confines jobs with it, and keeps no CAP_SYS_ADMIN to mount it;
# favordynmods makes moving a job's process into its cgroup cheap: 1.8 ms instead of 2-24 ms
# waiting for RCU under TCG, at some cost to fork and exit),
# loads the virtio drivers in dependency order (computed when the image was built), then hands
# PID 1 to firmware.pid1.supervisor, which starts and supervises the zone's processes.
export PATH=/bin
mount -t devtmpfs devtmpfs /dev
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t cgroup2 -o favordynmods cgroup2 /sys/fs/cgroup || echo "sez: mounting cgroup2 failed"
while read -r module; do
    insmod "/lib/modules/$module.ko" || echo "sez: insmod $module failed"
done < /etc/sez/modules
# The drivers of the device's own hardware (BBRAM disk, fw_cfg) load now, bound to nothing:
# PID 1 binds them once the hardware says start (firmware.pid1.start).
echo 0 > /sys/bus/virtio/drivers_autoprobe
echo 0 > /sys/bus/platform/drivers_autoprobe
while read -r module; do
    insmod "/lib/modules/$module.ko" || echo "sez: insmod $module failed"
done < /etc/sez/modules.device
cd /opt/sez || exit 1
exec /usr/bin/python3.11 -S -E -B -c 'import firmware.pid1.supervisor as s; s.main()'
