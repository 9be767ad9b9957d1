"""PID 1 of the zone: ``init.sh`` (the image's /init) and the supervisor it hands over to,
which reads the hardware's hand-over (``hardware``) and starts the other processes."""
