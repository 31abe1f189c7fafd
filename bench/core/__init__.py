"""What every step of a run stands on: typed errors and how a failure reads (one line, and its
long form), the child processes it starts and stops, free loopback ports, ownership labels for
what it leaves on the machine, the cache folder. Standard library only (psutil aside),
importing nothing else of prefect-bench."""
