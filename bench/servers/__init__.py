"""The servers under test, one module per step of knowing them:

- `specs`: every server as data (built-in `builtin.toml`, a user's servers.toml); standard
  library only, so noxfile.py can read the server names;
- `adapter`: `ServerAdapter`, which runs a spec (command, environment, build, version);
  `python` and `zig` refine it;
- `registry`: the name → adapter table and `make_server`;
- `running`: `start_server` (free port, health wait, stop) and `RunningServer`.
"""
