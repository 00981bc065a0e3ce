//! Process-level tests: written next.
