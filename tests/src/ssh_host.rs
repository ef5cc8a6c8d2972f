//! An SSH host (a bastion) for the `[source.ssh]` tests: Debian's real `sshd` as a child
//! process, with its own config, host key and authorized keys in a temp dir, listening on a
//! high port of a veth address that leads into a network namespace.
//!
//! The point is to prove that walflow reaches the database *only* through the tunnel, so walflow
//! runs inside a namespace of its own ([`NetNs`]): there, 127.0.0.1 is the namespace's own
//! loopback, where no PostgreSQL listens, and the only way out is the veth pair to the SSH
//! host's address. sshd, in the root namespace, forwards channels to the test cluster on
//! 127.0.0.1, which the test itself keeps reaching directly to write rows and compare.
//!
//! Namespaces are named after the test process (`wfssh-<pid>-<n>`): they are deleted on drop
//! (also while a panic unwinds), and ones left by test processes that no longer exist are
//! deleted by the next test that makes one.

use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::child_process;

const NETNS_PREFIX: &str = "wfssh-";

/// A network namespace joined to the root namespace by a veth pair in a private /30:
/// `host_addr` (root side, where sshd listens) and `inner_addr` (the namespace's side).
#[derive(Debug)]
pub struct NetNs {
    name: String,
    root_link: String,
    host_addr: Ipv4Addr,
}

impl NetNs {
    /// Creates a namespace with its loopback up and a veth pair to the root namespace.
    pub fn create() -> anyhow::Result<NetNs> {
        static SEQUENCE: AtomicU32 = AtomicU32::new(0);
        static CREATING: Mutex<()> = Mutex::new(());
        let _guard = CREATING.lock().unwrap_or_else(|p| p.into_inner());
        remove_stale_namespaces();
        let pid = std::process::id();
        let n = SEQUENCE.fetch_add(1, Ordering::Relaxed);
        let name = format!("{NETNS_PREFIX}{pid}-{n}");
        let root_link = format!("wfs{pid}r{n}");
        let inner_link = format!("wfs{pid}n{n}");
        let (host_addr, inner_addr) = free_subnet(pid, n)?;
        let ns = NetNs {
            name,
            root_link,
            host_addr,
        };
        ip(&["netns", "add", &ns.name])?;
        ip(&[
            "link",
            "add",
            &ns.root_link,
            "type",
            "veth",
            "peer",
            "name",
            &inner_link,
            "netns",
            &ns.name,
        ])?;
        ip(&[
            "addr",
            "add",
            &format!("{host_addr}/30"),
            "dev",
            &ns.root_link,
        ])?;
        ip(&["link", "set", &ns.root_link, "up"])?;
        ip(&[
            "-n",
            &ns.name,
            "addr",
            "add",
            &format!("{inner_addr}/30"),
            "dev",
            &inner_link,
        ])?;
        ip(&["-n", &ns.name, "link", "set", &inner_link, "up"])?;
        ip(&["-n", &ns.name, "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// The namespace's name (for `ip netns exec`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The root side's address: reachable from inside the namespace.
    pub fn host_addr(&self) -> Ipv4Addr {
        self.host_addr
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.name]);
        let _ = ip(&["link", "del", &self.root_link]);
    }
}

/// Runs `ip ARGS`, failing with its stderr.
fn ip(args: &[&str]) -> anyhow::Result<()> {
    let output = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("cannot run ip (apt-get install iproute2)")?;
    if !output.status.success() {
        bail!(
            "ip {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

/// Deletes the namespaces of test processes that are gone.
fn remove_stale_namespaces() {
    let Ok(output) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        let Some(pid) = name
            .strip_prefix(NETNS_PREFIX)
            .and_then(|rest| rest.split('-').next())
        else {
            continue;
        };
        if !Path::new("/proc").join(pid).exists() {
            let _ = ip(&["netns", "del", name]);
        }
    }
}

/// A /30 in 10.213.0.0/16 that no interface uses yet: (root side, namespace side).
fn free_subnet(pid: u32, n: u32) -> anyhow::Result<(Ipv4Addr, Ipv4Addr)> {
    let used = Command::new("ip")
        .args(["-o", "-4", "addr", "show"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    for attempt in 0..16384u32 {
        let index = (pid.wrapping_mul(31).wrapping_add(n).wrapping_add(attempt)) % 16384;
        let base = u32::from(Ipv4Addr::new(10, 213, 0, 0)) + index * 4;
        let (host, inner) = (Ipv4Addr::from(base + 1), Ipv4Addr::from(base + 2));
        if !used.contains(&format!(" {host}/")) && !used.contains(&format!(" {inner}/")) {
            return Ok((host, inner));
        }
    }
    bail!("no free /30 in 10.213.0.0/16")
}

/// An SSH key pair made by `ssh-keygen` (ed25519).
#[derive(Debug, Clone)]
pub struct KeyPair {
    /// The private key file (OpenSSH format).
    pub private: PathBuf,
    /// The public key line (`ssh-ed25519 AAAA… comment`).
    pub public: String,
}

impl KeyPair {
    /// Makes a key pair at `path` (and `path.pub`), encrypted when `passphrase` is not empty.
    pub fn generate(path: &Path, passphrase: &str) -> anyhow::Result<KeyPair> {
        run(Command::new("ssh-keygen")
            .args([
                "-q",
                "-t",
                "ed25519",
                "-C",
                "walflow-test",
                "-N",
                passphrase,
                "-f",
            ])
            .arg(path))?;
        Ok(KeyPair {
            private: path.to_owned(),
            public: std::fs::read_to_string(path.with_extension("pub"))?
                .trim()
                .to_string(),
        })
    }

    /// The private key file's content (to check it never leaks).
    pub fn private_text(&self) -> String {
        std::fs::read_to_string(&self.private).unwrap_or_default()
    }

    /// `SHA256:…`, as `ssh-keygen -lf` prints it.
    pub fn fingerprint(&self) -> anyhow::Result<String> {
        let output = Command::new("ssh-keygen")
            .arg("-lf")
            .arg(self.private.with_extension("pub"))
            .output()?;
        let text = String::from_utf8_lossy(&output.stdout);
        text.split_whitespace()
            .nth(1)
            .map(str::to_string)
            .context("ssh-keygen -lf printed no fingerprint")
    }
}

fn run(command: &mut Command) -> anyhow::Result<()> {
    let output = command
        .stdin(Stdio::null())
        .output()
        .context("cannot run ssh-keygen (apt-get install openssh-client)")?;
    if !output.status.success() {
        bail!(
            "{command:?} failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

/// A running `sshd` that lets [`SshHost::user`] in with [`SshHost::client_key`] and forwards
/// TCP; stopped (with every session it forked) when dropped.
#[derive(Debug)]
pub struct SshHost {
    dir: tempfile::TempDir,
    addr: SocketAddr,
    host_key: KeyPair,
    client_key: KeyPair,
    child: Mutex<Option<Child>>,
}

/// The passphrase of [`SshHost::client_key`].
pub const KEY_PASSPHRASE: &str = "walflow-ssh-key-passphrase";

impl SshHost {
    /// Starts sshd on `listen` (a free port is picked) with a new host key and a new client key
    /// (encrypted with [`KEY_PASSPHRASE`]) in its authorized keys.
    pub fn start(listen: Ipv4Addr) -> anyhow::Result<SshHost> {
        let dir = tempfile::Builder::new().prefix("walflow-sshd-").tempdir()?;
        let host_key = KeyPair::generate(&dir.path().join("host_ed25519"), "")?;
        let client_key = KeyPair::generate(&dir.path().join("client_ed25519"), KEY_PASSPHRASE)?;
        std::fs::write(
            dir.path().join("authorized_keys"),
            format!("{}\n", client_key.public),
        )?;
        let addr = SocketAddr::from((listen, crate::free_port()));
        let host = SshHost {
            dir,
            addr,
            host_key,
            client_key,
            child: Mutex::new(None),
        };
        host.write_config()?;
        host.start_again()?;
        Ok(host)
    }

    fn write_config(&self) -> anyhow::Result<()> {
        let d = self.dir.path();
        let config = format!(
            "Port {port}\nListenAddress {ip}\nHostKey {d}/host_ed25519\nPidFile none\n\
             AuthorizedKeysFile {d}/authorized_keys\nStrictModes no\nUsePAM no\n\
             PermitRootLogin prohibit-password\nPasswordAuthentication no\n\
             KbdInteractiveAuthentication no\nPubkeyAuthentication yes\n\
             AllowTcpForwarding yes\nAllowUsers {user}\nLogLevel VERBOSE\n",
            port = self.addr.port(),
            ip = self.addr.ip(),
            d = d.display(),
            user = self.user(),
        );
        std::fs::write(d.join("sshd_config"), config)?;
        // sshd refuses to start without its privilege separation directory.
        std::fs::create_dir_all("/run/sshd")?;
        Ok(())
    }

    /// Starts sshd again after [`kill`](Self::kill), on the same address and keys, and waits
    /// until it accepts connections.
    pub fn start_again(&self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())?;
        let mut command = Command::new("/usr/sbin/sshd");
        command
            .args(["-D", "-e", "-f"])
            .arg(self.dir.path().join("sshd_config"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let mut child = child_process::spawn_tied(command, libc::SIGKILL)
            .context("cannot start /usr/sbin/sshd (apt-get install openssh-server)")?;
        let deadline = Instant::now() + Duration::from_secs(15);
        while TcpStream::connect_timeout(&self.addr, Duration::from_millis(200)).is_err() {
            if let Ok(Some(status)) = child.try_wait() {
                bail!("sshd exited ({status}):\n{}", self.log());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                bail!(
                    "sshd did not listen on {} within 15 s:\n{}",
                    self.addr,
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        *self.child.lock().unwrap_or_else(|p| p.into_inner()) = Some(child);
        Ok(())
    }

    /// SIGKILLs sshd and every session process it forked (killing the listener alone would
    /// leave established sessions running, as restarting sshd does on purpose).
    pub fn kill(&self) {
        let Some(mut child) = self.child.lock().unwrap_or_else(|p| p.into_inner()).take() else {
            return;
        };
        for pid in descendants(child.id()) {
            // SAFETY: a plain syscall on pids that descend from our child.
            unsafe {
                libc::kill(pid as libc::pid_t, libc::SIGKILL);
            }
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    /// The address sshd listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The user the tests log in as (this process's user: root).
    pub fn user(&self) -> String {
        std::env::var("USER")
            .ok()
            .filter(|u| !u.is_empty())
            .unwrap_or_else(|| "root".into())
    }

    /// The client key the SSH host accepts (encrypted with [`KEY_PASSPHRASE`]).
    pub fn client_key(&self) -> &KeyPair {
        &self.client_key
    }

    /// The SSH host's key.
    pub fn host_key(&self) -> &KeyPair {
        &self.host_key
    }

    /// A known_hosts file listing the SSH host with its key.
    pub fn known_hosts(&self) -> anyhow::Result<PathBuf> {
        let path = self.dir.path().join("known_hosts");
        let mut fields = self.host_key.public.split_whitespace();
        let (kind, key) = (fields.next().unwrap_or(""), fields.next().unwrap_or(""));
        std::fs::write(
            &path,
            format!("[{}]:{} {kind} {key}\n", self.addr.ip(), self.addr.port()),
        )?;
        Ok(path)
    }

    /// A directory for the test's own files (keys, known_hosts variants).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("sshd.log")
    }

    /// sshd's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }
}

impl Drop for SshHost {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Every process below `root`, from /proc.
fn descendants(root: u32) -> Vec<u32> {
    let mut parents: Vec<(u32, u32)> = Vec::new();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
                continue;
            };
            // The parent pid is the second field after the parenthesised command name.
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                .and_then(|p| p.parse::<u32>().ok());
            if let Some(ppid) = ppid {
                parents.push((pid, ppid));
            }
        }
    }
    let mut found = vec![root];
    let mut i = 0;
    while i < found.len() {
        let parent = found[i];
        found.extend(
            parents
                .iter()
                .filter(|(_, p)| *p == parent)
                .map(|(c, _)| *c),
        );
        i += 1;
    }
    found.remove(0);
    found
}
