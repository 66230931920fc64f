//! Venus, the client cache manager. Not built yet: see `DESIGN.md` §4 and issue 5.
