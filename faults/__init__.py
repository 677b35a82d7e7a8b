"""Fault tests of the Work Session Service ("Operations and durability").

Every part of the service runs as a real subprocess on free loopback ports with a temporary
data directory (`faults.stack`); simulated field devices stream checks through the HTTP API
while a fault is injected (`faults.scenarios`):

- ``worker_kill``       (a) SIGKILL the Temporal worker at random moments, N times;
- ``temporal_restart``  (b) restart the Temporal dev server (same database file, same port);
- ``database_outage``   (c) block every write to the read model for a while;
- ``resend``            (d) the same check resent up to 5 times, some concurrently, across
  worker kills.

``python -m faults --quick`` (CI size, about 2 minutes) or ``python -m faults`` (long, about
10 minutes) runs them, prints the figures and exits non-zero on any lost, duplicated or
disagreeing check. See docs/reliability.md.

``faults.harness`` is the test harness that tests/ and benchmarks/ share with it (free ports,
`worksession dev` as a child process): test tooling, like the rest of this package, that the
service never imports and the image leaves out.
"""
