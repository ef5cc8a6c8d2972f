//! Test harness: throwaway PostgreSQL clusters and helpers shared by the integration tests.
