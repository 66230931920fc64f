//! Vice, callback and auth interfaces and their codecs. Not built yet: see `DESIGN.md` §2.
