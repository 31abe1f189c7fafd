"""What every step of a run stands on: typed errors, the child processes it starts and stops,
free loopback ports, ownership labels for what it leaves on the machine, the cache folder.
Standard library only (psutil aside), importing nothing else of prefect-bench."""
