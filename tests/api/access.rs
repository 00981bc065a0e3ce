//! Access-control tests: written in the next commit.
