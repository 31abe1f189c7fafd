"""--preload N: a cell's fresh database holding N flow runs before it is measured.

shape.py says what they are, seed.py sends them through the server's API, cache.py keeps the
seeded database for the next cell, prepare.py is the step of the run that does it all.
"""
