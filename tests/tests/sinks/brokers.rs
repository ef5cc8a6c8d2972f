//! Real destinations for the sink tests: nats-server (JetStream), redis-server and tansu
//! (Kafka protocol), each on a free loopback port with its data in a temporary directory, tied to
//! the test process so nothing outlives it. `stop` kills a server; `start` brings it back on the
//! same port and data directory (NATS and Redis keep their data across that; tansu runs on
//! memory storage and starts empty).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use walflow_tests::child_process::spawn_tied;

/// Where scripts/install-brokers puts tansu.
pub const TANSU: &str = "/var/cache/walflow-test/tansu/bin/tansu";

/// What kind of server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Nats,
    Redis,
    Tansu,
}

/// One running (or stopped) server.
pub struct Broker {
    kind: Kind,
    port: u16,
    /// The port tansu tells clients to use (a proxy in front of it), when not its own.
    advertised: Option<u16>,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

pub use walflow_tests::free_port;

/// The binary of `kind`, if installed.
pub fn binary(kind: Kind) -> Option<PathBuf> {
    let path = match kind {
        Kind::Nats => which("nats-server")?,
        Kind::Redis => which("redis-server")?,
        Kind::Tansu => PathBuf::from(TANSU),
    };
    path.exists().then_some(path)
}

fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/usr/bin".into()])
        .map(|d| d.join(name))
        .find(|p| p.exists())
}

impl Broker {
    /// Starts a server of `kind`; panics with the install hint when it is missing.
    pub fn start(kind: Kind) -> Broker {
        let mut broker = Broker {
            kind,
            port: free_port(),
            advertised: None,
            dir: tempfile::tempdir().expect("temp dir"),
            child: None,
        };
        broker.restart();
        broker
    }

    /// Starts tansu telling its clients to connect to `port` (where a proxy forwards to it).
    #[allow(dead_code)] // the sink benchmark shares this file and uses no proxy
    pub fn start_tansu_behind(port: u16) -> Broker {
        let mut broker = Broker {
            kind: Kind::Tansu,
            port: free_port(),
            advertised: Some(port),
            dir: tempfile::tempdir().expect("temp dir"),
            child: None,
        };
        broker.restart();
        broker
    }

    /// The port it listens on.
    #[allow(dead_code)] // as above
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The client URL.
    pub fn url(&self) -> String {
        match self.kind {
            Kind::Nats => format!("nats://127.0.0.1:{}", self.port),
            Kind::Redis => format!("redis://127.0.0.1:{}", self.port),
            Kind::Tansu => format!("127.0.0.1:{}", self.port),
        }
    }

    /// Kills the server (SIGKILL: no goodbye to clients).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port and data directory and waits until it accepts
    /// connections.
    pub fn restart(&mut self) {
        self.stop();
        let binary = binary(self.kind).unwrap_or_else(|| {
            panic!(
                "{:?} is not installed; run scripts/install-brokers",
                self.kind
            )
        });
        let mut command = Command::new(binary);
        self.arguments(&mut command);
        let log = std::fs::File::create(self.log_path()).expect("broker log");
        command
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("broker log"))
            .stderr(log);
        let child = spawn_tied(command, libc::SIGKILL).expect("cannot start broker");
        self.child = Some(child);
        self.wait_ready();
    }

    fn arguments(&self, command: &mut Command) {
        let port = self.port.to_string();
        let data = self.dir.path().join("data");
        std::fs::create_dir_all(&data).expect("broker data dir");
        match self.kind {
            Kind::Nats => {
                command
                    .args(["-a", "127.0.0.1", "-p", &port, "-js", "-sd"])
                    .arg(&data);
            }
            Kind::Redis => {
                command
                    .args(["--port", &port, "--bind", "127.0.0.1", "--dir"])
                    .arg(&data)
                    .args([
                        "--appendonly",
                        "yes",
                        "--appendfsync",
                        "always",
                        "--save",
                        "",
                        "--daemonize",
                        "no",
                        "--protected-mode",
                        "no",
                    ]);
            }
            Kind::Tansu => {
                command.arg("broker").args([
                    "--listener-url",
                    &format!("tcp://127.0.0.1:{port}"),
                    "--advertised-listener-url",
                    &format!("tcp://127.0.0.1:{}", self.advertised.unwrap_or(self.port)),
                    "--storage-engine",
                    "memory://tansu/",
                ]);
                command.env("RUST_LOG", "warn");
            }
        }
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("server.log")
    }

    /// The server's log, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!("{:?} exited with {status}:\n{}", self.kind, self.log());
            }
            assert!(
                Instant::now() < deadline,
                "{:?} did not listen on {} within 30s:\n{}",
                self.kind,
                self.port,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// The data directory.
    #[allow(dead_code)]
    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.stop();
    }
}
