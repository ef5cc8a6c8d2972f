//! The `[source.ssh]` line of `walflow check`: the SSH host answered, its host key is the one on
//! record and it accepted the login. Checked before anything else, because every other check
//! goes through the tunnel, and an SSH problem reported as "cannot connect to PostgreSQL" would
//! send the operator to the wrong machine.

use std::sync::Arc;

use walflow_config::SourceConfig;
use walflow_pg::ConnectOptions;
use walflow_pg::ssh::Tunnel;

use super::Report;

/// Logs in to the SSH host of `source`, if it has one, and reports it. `None` when the checks
/// cannot go on (the failure is in the report); otherwise the tunnel to hold while they run.
pub(super) async fn check(
    source: &SourceConfig,
    report: &mut Report,
) -> Option<Option<Arc<Tunnel>>> {
    let Some(ssh) = &source.ssh else {
        return Some(None);
    };
    let tunnel = match ConnectOptions::from_source(source) {
        Ok(opts) => opts.tunnel?,
        // The connection check reports bad options.
        Err(_) => return Some(None),
    };
    match tunnel.verify().await {
        Ok(verified) => {
            report.ok(
                "ssh tunnel",
                format!(
                    "logged in to {} as \"{}\"; {verified}",
                    ssh.addr(),
                    ssh.user
                ),
            );
            Some(Some(tunnel))
        }
        Err(e) => {
            report.fail(
                "ssh tunnel",
                e.to_string(),
                "fix [source.ssh] or the SSH host as the message says, then run `walflow check` again",
            );
            None
        }
    }
}
