"""--profile: the server sampled while each wall-clock window measures it (`recording`: py-spy
for Python servers, `pyspy`; perf record for native ones, `perf`), its collapsed stacks
(`stacks`) kept with a flame graph (`flamegraph`) beside the result (`window`), and where the
samples moved between two runs (`diff`)."""

from bench.profile.window import KEPT_FOLDER, Outcome, ProfileTarget, profiled, window_stem

__all__ = ["KEPT_FOLDER", "Outcome", "ProfileTarget", "profiled", "window_stem"]
