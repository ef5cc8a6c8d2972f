//! Loopback ports for servers a test starts, or for a destination that must be down.

/// A loopback TCP port nothing listens on (the kernel's pick, released at once).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free loopback port")
}
