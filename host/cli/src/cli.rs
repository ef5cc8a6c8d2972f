//! The `walflow` command line: argument definitions and dispatch to the modules that do the work.
//!
//! Every command returns `anyhow::Result`; `main` prints a failure as one line (`error: …`) and
//! exits with the code of the error's class (`walflow_core::error::Class::exit_code`), so each
//! error must already say what is wrong and what to do.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// PostgreSQL change data capture through WebAssembly components.
#[derive(Debug, Parser)]
#[command(name = "walflow", version, about)]
pub struct Cli {
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// The verbs.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the pipeline until stopped (SIGINT/SIGTERM flush, checkpoint and exit 0).
    Run(RunArgs),
    /// Start a throwaway PostgreSQL, write changes and stream them through the built-in plugins.
    Demo(DemoArgs),
    /// Decode a slot and print events as JSON lines, without plugins.
    Tail(TailArgs),
    /// Work with plugins.
    #[command(subcommand)]
    Plugin(PluginCommand),
    /// Check that the source database is ready, with the SQL to fix each finding.
    Check(ConfigArgs),
    /// Before a PostgreSQL upgrade, with writes stopped: wait until the running pipeline has
    /// delivered everything, then record a drain marker so `walflow run` continues on the
    /// upgraded server without a re-snapshot.
    Drain(DrainArgs),
    /// Print the setup script (user, grants, publication, slot, signal and heartbeat tables).
    SetupSql(SetupSqlArgs),
    /// Request an incremental snapshot of tables.
    Snapshot(SnapshotArgs),
    /// Work with configurations.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Host many tenants' pipelines in one process, managed through a directory and an API.
    Serve(ServeArgs),
}

/// `walflow serve -c serve.toml`
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// The service's configuration (tenants, listen address, pipelines directory).
    #[arg(short, long, default_value = "serve.toml")]
    pub config: PathBuf,
}

/// `walflow config …`
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Print the JSON Schema of a configuration (TOML or JSON files follow it alike).
    Schema,
}

/// `-c walflow.toml`
#[derive(Debug, Args)]
pub struct ConfigArgs {
    /// The configuration file.
    #[arg(short, long, default_value = "walflow.toml")]
    pub config: PathBuf,
}

/// `walflow run`
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The configuration file.
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Continue although the slot's history has a gap (see the message that suggested this).
    #[arg(long)]
    pub accept_gap: bool,
}

/// `walflow drain`
#[derive(Debug, Args)]
pub struct DrainArgs {
    /// The configuration file (the running `walflow run`'s).
    #[command(flatten)]
    pub config: ConfigArgs,
    /// How long to wait for writes to stop and everything to be delivered (e.g. `30s`, `5m`).
    #[arg(long, default_value = "5m", value_parser = walflow_config::parse_duration)]
    pub timeout: std::time::Duration,
}

/// `walflow demo`
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// How long to write changes before stopping.
    #[arg(long, default_value = "5s")]
    pub duration: String,
    /// Directory holding the built-in plugins (`*.wasm`); found automatically when omitted.
    #[arg(long)]
    pub plugins_dir: Option<PathBuf>,
}

/// `walflow tail`
#[derive(Debug, Args)]
pub struct TailArgs {
    /// A configuration file to take the source from (flags override it).
    #[arg(short, long)]
    pub config: Option<PathBuf>,
    /// `postgres://user@host:port/db`
    #[arg(long)]
    pub url: Option<String>,
    /// Environment variable holding the password.
    #[arg(long)]
    pub password_env: Option<String>,
    /// disable | prefer | require | verify-ca | verify-full
    #[arg(long)]
    pub sslmode: Option<String>,
    /// Root certificates (PEM) for verify-ca/verify-full.
    #[arg(long)]
    pub sslrootcert: Option<PathBuf>,
    /// Replication slot (created if missing).
    #[arg(long)]
    pub slot: Option<String>,
    /// Publication.
    #[arg(long)]
    pub publication: Option<String>,
    /// Stop once this LSN (e.g. `0/16B3748`) has been reached.
    #[arg(long)]
    pub until_lsn: Option<String>,
    /// Confirm what was printed to the server, as a consumer would (off: the slot does not move).
    #[arg(long)]
    pub confirm: bool,
    /// Continue although the slot's history has a gap (see the message that suggested this).
    #[arg(long)]
    pub accept_gap: bool,
}

/// `walflow plugin …`
#[derive(Debug, Subcommand)]
pub enum PluginCommand {
    /// Run a plugin chain over JSON-lines events and print the result.
    Run(PluginRunArgs),
}

/// `walflow plugin run`
#[derive(Debug, Args)]
pub struct PluginRunArgs {
    /// `FILE[=JSON]`: a plugin and its config, in chain order; repeatable.
    #[arg(long = "plugin", required = true)]
    pub plugins: Vec<String>,
    /// JSON-lines input (sink records); standard input when omitted.
    #[arg(long)]
    pub input: Option<PathBuf>,
    /// Events per batch.
    #[arg(long, default_value_t = 1024)]
    pub batch_size: usize,
}

/// `walflow setup-sql`
#[derive(Debug, Args)]
pub struct SetupSqlArgs {
    /// The configuration file.
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Amazon RDS / Aurora variant (rds_replication instead of REPLICATION).
    #[arg(long)]
    pub rds: bool,
}

/// `walflow snapshot`
#[derive(Debug, Args)]
pub struct SnapshotArgs {
    /// The configuration file.
    #[command(flatten)]
    pub config: ConfigArgs,
    /// `schema.table` to snapshot (or, with --stop, to stop); repeatable.
    #[arg(long = "table", required_unless_present_any = ["stop", "pause", "resume"])]
    pub tables: Vec<String>,
    /// Stop the running incremental snapshot (of the --table tables, or all).
    #[arg(long, conflicts_with_all = ["pause", "resume"])]
    pub stop: bool,
    /// Pause the running incremental snapshot: no more chunks until resumed.
    #[arg(long, conflicts_with_all = ["stop", "resume"])]
    pub pause: bool,
    /// Resume a paused incremental snapshot.
    #[arg(long, conflicts_with_all = ["stop", "pause"])]
    pub resume: bool,
}

impl From<DemoArgs> for crate::demo::DemoOptions {
    fn from(a: DemoArgs) -> Self {
        crate::demo::DemoOptions {
            duration: a.duration,
            plugins_dir: a.plugins_dir,
        }
    }
}

impl From<DrainArgs> for walflow_core::pipeline::drain::DrainOptions {
    fn from(a: DrainArgs) -> Self {
        walflow_core::pipeline::drain::DrainOptions {
            config: a.config.config,
            timeout: a.timeout,
        }
    }
}

impl From<TailArgs> for walflow_core::replication::tail::TailOptions {
    fn from(a: TailArgs) -> Self {
        walflow_core::replication::tail::TailOptions {
            config: a.config,
            url: a.url,
            password_env: a.password_env,
            sslmode: a.sslmode,
            sslrootcert: a.sslrootcert,
            slot: a.slot,
            publication: a.publication,
            until_lsn: a.until_lsn,
            confirm: a.confirm,
            accept_gap: a.accept_gap,
        }
    }
}

impl From<PluginRunArgs> for walflow_plugin_host::run_command::PluginRunOptions {
    fn from(a: PluginRunArgs) -> Self {
        walflow_plugin_host::run_command::PluginRunOptions {
            plugins: a.plugins,
            input: a.input,
            batch_size: a.batch_size,
        }
    }
}

/// The whole program: parse arguments, set up logging, run, and turn a failure into one line on
/// standard error and a non-zero exit. Shared by the `walflow` binary and test builds of it.
pub fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("WALFLOW_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(dispatch(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", one_sentence(&e));
            exit_code(&e)
        }
    }
}

/// The exit code for a failed run, by the class of its error (see the README's "Exit codes");
/// an error nothing classified is fatal.
fn exit_code(e: &anyhow::Error) -> std::process::ExitCode {
    let class = walflow_core::error::class_of(e).unwrap_or(walflow_core::error::Class::Fatal);
    std::process::ExitCode::from(class.exit_code())
}

/// The error and its causes on one line, leaving out causes the message already quotes.
fn one_sentence(e: &anyhow::Error) -> String {
    let mut message = e.to_string();
    for cause in e.chain().skip(1) {
        let cause = cause.to_string();
        if !message.contains(&cause) {
            message.push_str(": ");
            message.push_str(&cause);
        }
    }
    message
}

/// Runs a parsed command line.
pub async fn dispatch(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Run(args) => run(args).await,
        Command::Serve(args) => {
            let config = walflow_serve::ServeConfig::load(&args.config)?;
            walflow_serve::serve(config, std::sync::Arc::new(crate::components::Standard)).await
        }
        Command::Demo(args) => crate::demo::run(args.into()).await,
        Command::Tail(args) => walflow_core::replication::tail::run(&args.into()).await,
        Command::Plugin(PluginCommand::Run(args)) => {
            let options = args.into();
            tokio::task::spawn_blocking(move || walflow_plugin_host::run_command::run(&options))
                .await?
        }
        Command::Check(args) => walflow_core::preflight::run(&args.config).await,
        Command::Drain(args) => walflow_core::pipeline::drain::run(&args.into()).await,
        Command::SetupSql(args) => setup_sql(&args),
        Command::Snapshot(args) => snapshot(args).await,
        Command::Config(ConfigCommand::Schema) => {
            let schema = walflow_config::Config::json_schema();
            println!("{}", serde_json::to_string_pretty(&schema)?);
            Ok(())
        }
    }
}

async fn snapshot(args: SnapshotArgs) -> anyhow::Result<()> {
    use walflow_core::snapshot::request::Request;
    let config = walflow_config::Config::load(&args.config.config)?;
    let request = if args.stop {
        Request::StopSnapshot {
            tables: args.tables,
        }
    } else if args.pause {
        Request::PauseSnapshot
    } else if args.resume {
        Request::ResumeSnapshot
    } else {
        Request::ExecuteSnapshot {
            tables: args.tables,
        }
    };
    let message = walflow_core::snapshot::command::send(&config, request).await?;
    println!("{message}");
    Ok(())
}

fn setup_sql(args: &SetupSqlArgs) -> anyhow::Result<()> {
    let config = walflow_config::Config::load(&args.config.config)?;
    let platform = if args.rds {
        walflow_pg::setup_sql::Platform::Rds
    } else {
        walflow_pg::setup_sql::Platform::SelfManaged
    };
    print!("{}", walflow_pg::setup_sql::render(&config, platform)?);
    Ok(())
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    let config = walflow_config::Config::load(&args.config.config)?;
    let options = walflow_core::pipeline::RunOptions {
        accept_gap: args.accept_gap,
        ..Default::default()
    };
    let summary = crate::run(config, options).await?;
    tracing::info!(
        events = summary.events_out,
        acked_lsn = summary
            .acked_lsn
            .map(walflow_core::event::format_lsn)
            .unwrap_or_default(),
        "stopped"
    );
    Ok(())
}
