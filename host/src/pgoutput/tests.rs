//! Byte-vector tests for every pgoutput message, and the no-panic property test.
