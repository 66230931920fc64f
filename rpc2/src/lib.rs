//! The RPC2 + SFTP protocol. Not built yet: see `DESIGN.md` §5 and issue 3.
