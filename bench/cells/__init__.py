"""Cells and how they are run: the matrix (`matrix`: which cells, their nox ids), what a cell's
process is told and tells back (`commands`: its command line, the exit codes), one cell's flow
(`runner`: provision → start server → fixtures → load → sample → result), repetitions
(`repeat`: the loop and when `auto` stops) and the matrix run in rounds (`rounds`).

`matrix` and `commands` are standard library only: noxfile.py imports them."""
