//! The `stdout` sink: one record per line on standard output, for pipes and the demo.
//!
//! Its acknowledgement is a flushed standard output: whatever reads the pipe owns durability.

use std::io::Write;

use async_trait::async_trait;

use super::{Sink, SinkBatch, SinkError};

/// Writes records to standard output.
pub struct StdoutSink {
    out: std::io::BufWriter<std::io::Stdout>,
}

impl Default for StdoutSink {
    fn default() -> StdoutSink {
        StdoutSink::new()
    }
}

impl StdoutSink {
    /// Builds the sink; it takes no settings.
    pub fn new() -> StdoutSink {
        StdoutSink {
            out: std::io::BufWriter::with_capacity(1 << 16, std::io::stdout()),
        }
    }
}

fn broken(e: std::io::Error) -> SinkError {
    SinkError::Fatal(format!("cannot write to standard output: {e}"))
}

#[async_trait]
impl Sink for StdoutSink {
    fn name(&self) -> &str {
        "stdout"
    }

    async fn write(&mut self, batch: SinkBatch<'_>) -> Result<(), SinkError> {
        for record in batch.records {
            self.out.write_all(&record.payload).map_err(broken)?;
            self.out.write_all(b"\n").map_err(broken)?;
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), SinkError> {
        self.out.flush().map_err(broken)
    }
}
