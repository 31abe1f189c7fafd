"""The matrix's dimensions besides the server: which databases and brokers exist.

Standard library only: noxfile.py reads them (through bench.cells.matrix) to parametrize its
sessions.
"""

DBS = ("sqlite", "postgres")
BROKERS = ("memory", "redis")
# The in-process broker: a session id names the broker only where it is another.
DEFAULT_BROKER = "memory"
