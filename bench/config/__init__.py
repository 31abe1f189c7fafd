"""What a run is asked to do: the matrix's dimensions (`dimensions`), Prefect versions
(`versions`), the run's settings (`run.RunConfig`) and the grammars of its options
(`objectives`: sweeps and SLOs; `preload_shape`).

`dimensions` and `versions` are standard library only: noxfile.py imports them."""
