//! Vice, the file server. Not built yet: see `DESIGN.md` §3 and issue 4.
