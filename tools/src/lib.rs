//! The user and admin tools (`cfs`, `clog`, `volutil`, ...). Not built yet: see `INTERFACE.md`.
