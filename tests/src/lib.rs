//! End-to-end harness: real `codasrv` and `venus` processes. Not built yet: see `DESIGN.md` §6.
