"""Layer 1, the zone monitor: the one process that reads what crosses the channel.

``server``     the control port: frames in, answers out; host session and diagnostics ops
``sessions``   attested sessions: TLS 1.3 ending here, carried over the channel
``ops``        the zone's operations (evidence, owner, applets, jobs, schedules, audit)
``store``      the policy on the persistent state (owner, applets, outbox)
``state``      the state map and its group commit to BBRAM (through the key keeper)
``audit``      the hash-chained audit log
``jobs``       jobs: queueing, limits, receipts (their processes belong to the runner)
``schedules``  owner-signed schedules that run with or without a host
``links``      clients of the key keeper and the runner; ``deferred`` their results
``platform``   the port, the power button, memory and power-off

It holds no key but its sessions' TLS key of this boot (layer 0 made and certified it):
evidence, receipts, audit entries and seals come from layer 0.
"""
