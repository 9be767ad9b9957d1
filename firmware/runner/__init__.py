"""The applet runner (``runner``), which forks one confined process per job, and what runs in
that process (``job``). Holds nothing secret."""
