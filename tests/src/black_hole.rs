//! A network black hole for one TCP server address: packets to and from it are dropped by
//! nftables, with no RST and no ICMP — what a dead link, a firewall forgetting a flow or a
//! failed-over address look like from both ends. A TCP proxy cannot fake this (closing a
//! socket sends FIN or RST); only dropped packets leave both kernels waiting.
//!
//! The rules live in an nftables table of their own (`inet walflow_test_<pid>_<n>`) on the
//! `input` hook, so loopback traffic is dropped after it was sent (the sender gets no error,
//! as on a real network) and only the given address and port are matched: the tests' other
//! connections, and anyone else's, are untouched. The table is deleted when the guard drops,
//! also when the test panics; tables of test processes that died are removed by the next one.
//!
//! Needs root and the `nft` program (Debian `nftables`; scripts/test installs it). Without
//! them [`BlackHole::drop_traffic`] fails saying so — a test must never pass without its
//! outage.

use std::io::Write;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, bail};

const TABLE_PREFIX: &str = "walflow_test_";

/// Drops every packet to and from `addr:port` until dropped.
#[derive(Debug)]
pub struct BlackHole {
    table: String,
}

impl BlackHole {
    /// Starts dropping packets to `addr:port` and from it.
    pub fn drop_traffic(addr: Ipv4Addr, port: u16) -> anyhow::Result<BlackHole> {
        static SEQUENCE: AtomicU64 = AtomicU64::new(0);
        remove_stale_tables();
        let table = format!(
            "{TABLE_PREFIX}{}_{}",
            std::process::id(),
            SEQUENCE.fetch_add(1, Ordering::Relaxed)
        );
        let rules = format!(
            "table inet {table} {{
               chain input {{
                 type filter hook input priority -300; policy accept;
                 ip daddr {addr} tcp dport {port} drop
                 ip saddr {addr} tcp sport {port} drop
               }}
             }}\n"
        );
        nft(&["-f", "-"], Some(&rules)).context(
            "cannot install the nftables black hole (the test needs root and `nft`: apt-get install nftables, or run scripts/test)",
        )?;
        Ok(BlackHole { table })
    }

    /// Lets packets through again.
    pub fn lift(self) {}
}

impl Drop for BlackHole {
    fn drop(&mut self) {
        if let Err(e) = nft(&["delete", "table", "inet", &self.table], None) {
            eprintln!(
                "cannot remove nftables table inet {}: {e:#}; remove it with `nft delete table inet {}`",
                self.table, self.table
            );
        }
    }
}

/// Runs `nft args…`, feeding `input` on stdin; its stdout on success.
fn nft(args: &[&str], input: Option<&str>) -> anyhow::Result<String> {
    let mut child = Command::new("nft")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot run `nft` (Debian package nftables)")?;
    let mut stdin = child.stdin.take().expect("piped");
    if let Some(text) = input {
        stdin.write_all(text.as_bytes())?;
    }
    drop(stdin);
    let output = child.wait_with_output()?;
    if !output.status.success() {
        bail!(
            "nft {} failed ({}): {}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Deletes black holes left by test processes that no longer exist (killed before their
/// guards ran).
fn remove_stale_tables() {
    let Ok(tables) = nft(&["list", "tables", "inet"], None) else {
        return;
    };
    for line in tables.lines() {
        let Some(name) = line.trim().strip_prefix("table inet ") else {
            continue;
        };
        let Some(pid) = name
            .strip_prefix(TABLE_PREFIX)
            .and_then(|rest| rest.split('_').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = nft(&["delete", "table", "inet", name], None);
        }
    }
}
