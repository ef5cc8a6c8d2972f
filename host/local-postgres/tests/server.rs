//! A real server: starts, listens, stops, starts again on the same port, has a standby, and
//! leaves nothing behind. Needs PostgreSQL's server binaries (see `Install::find`).

use std::net::TcpStream;
use std::time::Duration;

use walflow_local_postgres::{Install, LocalPostgres, Options, Shutdown};

fn listening(port: u16) -> bool {
    TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_secs(2)).is_ok()
}

#[test]
fn starts_stops_restarts_and_removes_its_directory() {
    let install = Install::find().unwrap();
    let options = Options::new(install)
        .setting("fsync", "off")
        .setting("max_connections", "20");
    let pg = LocalPostgres::init(options).unwrap();
    assert_eq!(pg.port(), 0, "no port before the first start");
    let conf = std::fs::read_to_string(pg.data_dir().join("postgresql.conf")).unwrap();
    assert!(conf.ends_with("max_connections = 20\n"), "{conf}");
    pg.start().unwrap();
    let port = pg.port();
    assert!((55001..=64999).contains(&port), "port {port}");
    assert!(listening(port));
    assert_eq!(
        pg.url("postgres", "db"),
        format!("postgres://postgres@127.0.0.1:{port}/db")
    );
    assert!(pg.start().is_err(), "a second start of a running server");

    pg.stop(Shutdown::Immediate);
    assert!(!listening(port));
    pg.start().unwrap();
    assert_eq!(pg.port(), port, "a restart keeps the port");
    assert!(listening(port));
    assert!(!pg.log_tail(5).is_empty());

    let dir = pg.dir().to_owned();
    drop(pg);
    assert!(!dir.exists(), "{} outlived the server", dir.display());
    assert!(!listening(port));
}

#[test]
fn a_replica_streams_from_its_primary() {
    let install = Install::find().unwrap();
    // fsync off: a checkpoint for the base backup on a busy disk takes seconds.
    let options = Options::new(install).setting("fsync", "off");
    let primary = LocalPostgres::init(options.clone()).unwrap();
    primary.start().unwrap();
    let replica = LocalPostgres::init(options.replica_of(primary.port())).unwrap();
    replica.start().unwrap();
    assert_ne!(replica.port(), primary.port());
    assert!(
        replica.data_dir().join("standby.signal").exists()
            || replica.data_dir().join("recovery.conf").exists()
    );
    let log = replica.log_tail(100);
    assert!(log.contains("entering standby mode"), "{log}");
}
