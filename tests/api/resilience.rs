//! Resilience tests: written next.
