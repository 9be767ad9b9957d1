"""Layer 0, the key keeper: the zone's identity (``identity``), its persistent store
(``bbram``) and the service that signs and seals for the monitor (``keeper``). The only
process that holds a private key."""
