"""What every zone process may use: the console log, process priority, the event loop
(``reactor``), non-blocking frame I/O (``port``) and the sockets between zone processes
(``ipc``). Nothing here holds a secret or parses host input."""
