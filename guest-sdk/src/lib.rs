//! walflow plugin SDK
