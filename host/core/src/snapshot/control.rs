//! The control socket of a running `walflow run`: how `walflow snapshot` reaches a pipeline
//! whose source may not be written to (`read_only = true`), where no signal row can carry the
//! request.
//!
//! A Unix socket in the state directory (`<slot>.control.sock`, so only users who can reach the
//! state directory can use it). One JSON request per connection, one JSON answer:
//! `{"type": "execute-snapshot", "data-collections": ["public.orders"]}` →
//! `{"ok": true, "message": "…"}` or `{"ok": false, "error": "…"}`. Requests are checked
//! against the database before the pipeline sees them, so a bad one is refused with a reason.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};

use super::request::{Request, validate};
use walflow_config::Config;

/// Longest request line accepted.
const MAX_REQUEST: u64 = 64 * 1024;

/// A request on its way to the pipeline, with where to send the answer.
pub struct Command {
    /// What is asked.
    pub request: Request,
    /// `Ok(message)` or `Err(reason)`.
    pub reply: oneshot::Sender<Result<String, String>>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Answer {
    ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

/// The socket of the pipeline `config` describes.
pub fn socket_path(config: &Config) -> PathBuf {
    let safe: String = config
        .source
        .slot
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect();
    config.state.dir.join(format!("{safe}.control.sock"))
}

/// Removes the socket file when the pipeline ends.
pub struct Listening {
    path: PathBuf,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Listening {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Listens for requests; each checked request is sent on `commands`, then `wake` is called so
/// the pipeline looks at it promptly.
pub async fn serve(
    config: &Config,
    commands: mpsc::Sender<Command>,
    wake: impl Fn() + Send + Sync + 'static,
) -> anyhow::Result<Listening> {
    let path = socket_path(config);
    std::fs::create_dir_all(&config.state.dir).with_context(|| {
        format!(
            "cannot create the state directory {}",
            config.state.dir.display()
        )
    })?;
    if UnixStream::connect(&path).await.is_ok() {
        anyhow::bail!(
            "another walflow is running for slot {} (its control socket {} answers); stop it first",
            config.source.slot,
            path.display()
        );
    }
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path)
        .with_context(|| format!("cannot open the control socket {}", path.display()))?;
    let config = config.clone();
    let wake = std::sync::Arc::new(wake);
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (config, commands, wake) = (config.clone(), commands.clone(), wake.clone());
            tokio::spawn(async move {
                if let Err(e) = answer(stream, &config, &commands, &*wake).await {
                    tracing::warn!(error = %e, "control request failed");
                }
            });
        }
    });
    Ok(Listening { path, task })
}

async fn answer(
    stream: UnixStream,
    config: &Config,
    commands: &mpsc::Sender<Command>,
    wake: &(dyn Fn() + Send + Sync),
) -> anyhow::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    BufReader::new(read.take(MAX_REQUEST))
        .read_line(&mut line)
        .await?;
    let outcome = handle(&line, config, commands, wake).await;
    let answer = match outcome {
        Ok(message) => Answer {
            ok: true,
            message: Some(message),
            error: None,
        },
        Err(error) => Answer {
            ok: false,
            message: None,
            error: Some(error),
        },
    };
    let mut text = serde_json::to_string(&answer)?;
    text.push('\n');
    write.write_all(text.as_bytes()).await?;
    Ok(())
}

async fn handle(
    line: &str,
    config: &Config,
    commands: &mpsc::Sender<Command>,
    wake: &(dyn Fn() + Send + Sync),
) -> Result<String, String> {
    let request: Request =
        serde_json::from_str(line.trim()).map_err(|e| format!("malformed request ({e})"))?;
    let client = walflow_pg::connect_sql(&config.source)
        .await
        .map_err(|e| e.to_string())?;
    validate(&client, config, &request)
        .await
        .map_err(|e| format!("{e:#}"))?;
    let (reply, answer) = oneshot::channel();
    commands
        .send(Command { request, reply })
        .await
        .map_err(|_| "the pipeline is stopping".to_string())?;
    wake();
    match tokio::time::timeout(Duration::from_secs(60), answer).await {
        Ok(Ok(result)) => result,
        Ok(Err(_)) => Err("the pipeline stopped before answering".into()),
        Err(_) => Err("the pipeline did not answer within 60 s".into()),
    }
}

/// Sends `request` to the running pipeline and returns its answer.
pub async fn request(config: &Config, request: &Request) -> anyhow::Result<String> {
    let path = socket_path(config);
    let stream = UnixStream::connect(&path).await.map_err(|e| {
        anyhow::anyhow!(
            "cannot reach the running walflow for slot {} at {} ({e}); start `walflow run -c …` with this config first",
            config.source.slot,
            path.display()
        )
    })?;
    let (read, mut write) = stream.into_split();
    let mut text = serde_json::to_string(request)?;
    text.push('\n');
    write.write_all(text.as_bytes()).await?;
    write.shutdown().await?;
    let mut line = String::new();
    BufReader::new(read.take(MAX_REQUEST))
        .read_line(&mut line)
        .await?;
    let answer: Answer = serde_json::from_str(line.trim())
        .with_context(|| format!("the running walflow answered {line:?}"))?;
    if answer.ok {
        Ok(answer.message.unwrap_or_else(|| "done".into()))
    } else {
        anyhow::bail!("{}", answer.error.unwrap_or_else(|| "refused".into()))
    }
}
