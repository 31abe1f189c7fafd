"""What a run watches while it measures: the machine's noise before a cell (`machine`), the
server's CPU and memory (`sampling`), the backends' counters (`telemetry`), and what a running
cell shows its user (`progress`)."""
