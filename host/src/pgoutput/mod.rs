//! pgoutput (being written)
