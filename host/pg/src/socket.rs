//! TCP settings for every socket walflow opens to PostgreSQL (replication, SQL and catalog
//! sessions, snapshot readers).
//!
//! A link that dies silently — packets dropped, no RST: a firewall or NAT forgetting the flow,
//! a cable, a failover moving an address — leaves an idle socket open forever by default (Linux
//! sends its first keepalive after two hours) and lets unacknowledged writes retry for about
//! fifteen minutes. Keepalive probes after [`KEEPALIVE_IDLE`] and a [`USER_TIMEOUT`] on unacknowledged
//! data turn such a link into a socket error within half a minute, which every caller already
//! knows how to handle (the replication stream reconnects; SQL sessions are reopened or fail
//! the command).

use std::io;
use std::time::Duration;

use socket2::{SockRef, TcpKeepalive};
use tokio::net::TcpStream;

/// Silence on the socket before the first keepalive probe.
pub const KEEPALIVE_IDLE: Duration = Duration::from_secs(10);

/// Time between unanswered keepalive probes.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);

/// Unanswered probes before the connection is dropped.
pub const KEEPALIVE_RETRIES: u32 = 3;

/// How long sent data may stay unacknowledged before the kernel drops the connection
/// (`TCP_USER_TIMEOUT`, Linux). Equal to the keepalive budget, so an idle and a busy socket
/// notice a dead peer after the same time (on Linux it also bounds the keepalive probing).
pub const USER_TIMEOUT: Duration = Duration::from_secs(
    KEEPALIVE_IDLE.as_secs() + KEEPALIVE_INTERVAL.as_secs() * KEEPALIVE_RETRIES as u64,
);

/// Turns on keepalive probes and the user timeout on a connected socket.
pub fn configure(tcp: &TcpStream) -> io::Result<()> {
    let socket = SockRef::from(tcp);
    let keepalive = TcpKeepalive::new()
        .with_time(KEEPALIVE_IDLE)
        .with_interval(KEEPALIVE_INTERVAL)
        .with_retries(KEEPALIVE_RETRIES);
    socket.set_tcp_keepalive(&keepalive)?;
    #[cfg(target_os = "linux")]
    socket.set_tcp_user_timeout(Some(USER_TIMEOUT))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_configured_socket_probes_and_times_out() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let tcp = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        configure(&tcp).unwrap();
        let socket = SockRef::from(&tcp);
        assert!(socket.keepalive().unwrap());
        assert_eq!(socket.tcp_keepalive_time().unwrap(), KEEPALIVE_IDLE);
        assert_eq!(socket.tcp_keepalive_interval().unwrap(), KEEPALIVE_INTERVAL);
        assert_eq!(socket.tcp_keepalive_retries().unwrap(), KEEPALIVE_RETRIES);
        #[cfg(target_os = "linux")]
        assert_eq!(socket.tcp_user_timeout().unwrap(), Some(USER_TIMEOUT));
    }

    #[test]
    fn the_user_timeout_is_the_keepalive_budget() {
        assert_eq!(
            USER_TIMEOUT,
            KEEPALIVE_IDLE + KEEPALIVE_INTERVAL * KEEPALIVE_RETRIES
        );
    }
}
