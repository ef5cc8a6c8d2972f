//! A throwaway certificate authority and server certificate for each test cluster.
//!
//! Made with the `openssl` command line tool, which every PostgreSQL server install pulls in
//! (Debian's postgresql depends on ssl-cert, which depends on openssl). EC P-256 keys keep
//! generation to a few milliseconds. The server certificate names `localhost`, `127.0.0.1` and
//! `::1` only, so connecting to `127.0.0.2` (where the cluster also listens) with verify-full
//! is a wrong-host-name case.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

/// Paths of the generated files.
#[derive(Debug, Clone)]
pub struct Certificates {
    /// The CA certificate (PEM), for `sslrootcert` in verify-ca/verify-full tests.
    pub ca_cert: PathBuf,
    /// The server certificate (PEM), signed by the CA.
    pub server_cert: PathBuf,
    /// The server's private key (PEM, mode 0600).
    pub server_key: PathBuf,
}

/// Host names and addresses the server certificate is valid for.
pub const CERT_SUBJECT_ALT_NAMES: &str = "DNS:localhost,IP:127.0.0.1,IP:::1";

fn openssl(dir: &Path, args: &[&str]) -> anyhow::Result<()> {
    let output = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .context("cannot run `openssl` (install the openssl package: apt-get install openssl)")?;
    if !output.status.success() {
        bail!(
            "openssl {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

/// Writes a CA and a server certificate into `dir`.
pub fn generate(dir: &Path) -> anyhow::Result<Certificates> {
    std::fs::create_dir_all(dir)?;
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut ca_args = vec!["req", "-x509"];
    ca_args.extend(ec);
    ca_args.extend([
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "3650",
        "-subj",
        "/CN=walflow test CA",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ]);
    openssl(dir, &ca_args)?;
    let mut csr_args = vec!["req"];
    csr_args.extend(ec);
    csr_args.extend([
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=localhost",
    ]);
    openssl(dir, &csr_args)?;
    std::fs::write(
        dir.join("server.ext"),
        format!(
            "subjectAltName={CERT_SUBJECT_ALT_NAMES}\nbasicConstraints=CA:FALSE\n\
             keyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n"
        ),
    )?;
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.crt",
            "-days",
            "3650",
            "-extfile",
            "server.ext",
        ],
    )?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        dir.join("server.key"),
        std::fs::Permissions::from_mode(0o600),
    )?;
    Ok(Certificates::at(dir))
}

impl Certificates {
    /// The paths [`generate`] writes into `dir` (relative when `dir` is).
    pub fn at(dir: &Path) -> Certificates {
        Certificates {
            ca_cert: dir.join("ca.crt"),
            server_cert: dir.join("server.crt"),
            server_key: dir.join("server.key"),
        }
    }
}
