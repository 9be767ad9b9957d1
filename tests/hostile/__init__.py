"""Hostile input against one live zone, shared by ``tests/e2e/test_hostile.py`` (a bounded part,
in ``make test``) and ``bench/fuzz.py`` (``make fuzz``, at least 100,000 hostile frames).

* ``generator``: seeded, reproducible cases of hostile bytes, by category (mutated valid frames,
  random frames, boundary lengths, deep and huge CBOR, every CBOR tag cbor2 decodes, every op
  with wrong types and absurd sizes), for the plain channel or an attested session;
* ``campaign``: writes them to one zone and checks the oracles after every batch (a new host
  session is answered; no monitor restart, no reboot; the monitor's memory under a bound;
  every error typed; no planted secret in any error, answer or console line);
* ``hosts``: hostile hosts (flooding, slowloris, reconnects) and hostile applets.

It lives under ``tests/`` because it is test code: it imports the product (``firmware.abi``,
``host_driver``, ``emulator``), never the other way round, and the benchmark script imports
it from the checkout.
"""
