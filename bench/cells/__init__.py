"""Cells and how they are run: the matrix (`matrix`: which cells, their nox ids), one cell's
flow (`runner`: provision → start server → fixtures → load → sample → result), repetitions
(`repeat`) and the matrix run in rounds (`rounds`).

`matrix` is standard library only: noxfile.py imports it."""
