//! `walflow serve`: two tenants' pipelines in one process, from files and from the API, changed
//! while the others stream; the API's authorization; secrets kept out of answers and logs.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value as Json, json};
use walflow_tests::http::{Answer, request};
use walflow_tests::replay::read_records;
use walflow_tests::wait::wait_for_async;
use walflow_tests::{Cluster, TEST_PASSWORD, TestDb, walflow};

const ACME_TOKEN: &str = "acme-token-5f0c1e7a9b";
const BOLT_TOKEN: &str = "bolt-token-83d2a64c11";
const ADMIN_TOKEN: &str = "admin-token-0e4f9d2b77";

/// A service under test: its address and directories.
struct Service {
    addr: String,
    dir: tempfile::TempDir,
}

impl Service {
    fn pipelines(&self) -> PathBuf {
        self.dir.path().join("pipelines")
    }

    fn out(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("{name}.jsonl"))
    }

    /// Where an API pipeline's relative file sink `out.jsonl` writes: inside its state
    /// directory, the only place a tenant's file sinks may write.
    fn api_out(&self, tenant: &str, pipeline: &str) -> PathBuf {
        self.dir
            .path()
            .join("state")
            .join(tenant)
            .join(pipeline)
            .join("out.jsonl")
    }

    fn call(&self, method: &str, path: &str, token: Option<&str>, body: Option<&str>) -> Answer {
        request(&self.addr, method, path, token, body).unwrap()
    }
}

/// Writes serve.toml (tenant acme with an inline token, bolt's from the environment).
fn service() -> Service {
    let dir = tempfile::Builder::new()
        .prefix("walflow-serve-")
        .tempdir()
        .unwrap();
    let addr = format!("127.0.0.1:{}", walflow_tests::free_port());
    let text = format!(
        "listen = \"{addr}\"\npipelines_dir = \"pipelines\"\nstate_dir = \"state\"\nscan_interval = \"200ms\"\n\
         admin_token_env = \"SERVE_ADMIN_TOKEN\"\n\n\
         [[tenants]]\nname = \"acme\"\ntoken = \"{ACME_TOKEN}\"\nmax_pipelines = 3\n\
         plugin_memory_mb = 1024\nmemory_mb = 600\n\n\
         [[tenants]]\nname = \"bolt\"\ntoken_env = \"BOLT_TOKEN\"\nallow_hosts = [\"127.0.0.1:9\"]\n"
    );
    std::fs::write(dir.path().join("serve.toml"), text).unwrap();
    std::fs::create_dir_all(dir.path().join("pipelines/acme")).unwrap();
    Service { addr, dir }
}

/// A database with table `t` and a publication of it, readable by the scram role.
async fn source() -> TestDb {
    let db = Cluster::shared().new_database().await;
    let name = db.name().to_string();
    db.client()
        .await
        .batch_execute(&format!(
            "CREATE TABLE t (id int PRIMARY KEY, v text);
             CREATE TABLE walflow_signal (id text PRIMARY KEY, type text NOT NULL, data text);
             CREATE PUBLICATION {name}_pub FOR TABLE t, walflow_signal;
             GRANT SELECT ON t TO walflow_scram;
             GRANT ALL ON walflow_signal TO walflow_scram;"
        ))
        .await
        .unwrap();
    db
}

/// A pipeline config (TOML) for a file: superuser, no snapshot, a file sink at `out`.
fn file_pipeline(db: &TestDb, out: &Path) -> String {
    db.config()
        .source("snapshot = \"never\"")
        .append(&format!(
            "[[sinks]]\ntype = \"file\"\npath = {}\n",
            walflow_tests::config_file::toml_string(&out.to_string_lossy())
        ))
        .to_toml(Path::new("ignored-by-serve"))
}

/// A pipeline config (JSON) for the API, with the password inline in the URL as tenants must,
/// the server verified against the cluster's CA given inline, and a file sink `out.jsonl` in
/// its state directory.
fn api_pipeline(db: &TestDb) -> String {
    let info = db.cluster();
    let ca = info.ca_cert().expect("the shared cluster serves TLS");
    json!({
        "source": {
            "url": format!("postgres://walflow_scram:{TEST_PASSWORD}@{}:{}/{}", info.host(), info.port(), db.name()),
            "slot": format!("{}_slot", db.name()),
            "publication": format!("{}_pub", db.name()),
            "snapshot": "never",
            "signal_table": "public.walflow_signal",
            "sslmode": "verify-full",
            "sslrootcert_pem": std::fs::read_to_string(ca).unwrap(),
        },
        "sinks": [{"type": "file", "path": "out.jsonl"}],
    })
    .to_string()
}

/// Inserts rows `ids` into `t`.
async fn insert(db: &TestDb, ids: std::ops::Range<i32>) {
    db.client()
        .await
        .batch_execute(&format!(
            "INSERT INTO t SELECT g, 'row ' || g FROM generate_series({}, {}) g",
            ids.start,
            ids.end - 1
        ))
        .await
        .unwrap();
}

/// The ids of the rows a file sink received.
fn ids_in(out: &Path) -> BTreeSet<i64> {
    read_records(out)
        .iter()
        .filter_map(|r| r["value"]["after"]["id"].as_i64())
        .collect()
}

/// Waits until `out` holds every id in `ids`.
async fn wait_rows(out: &Path, ids: std::ops::Range<i32>) {
    let want: BTreeSet<i64> = ids.map(i64::from).collect();
    wait_for_async(
        &format!("rows in {}", out.display()),
        Duration::from_secs(60),
        || async { ids_in(out).is_superset(&want).then_some(()) },
    )
    .await
    .unwrap();
}

/// The backend PID streaming `slot`, once it is active and past its consistent point. A slot
/// being created is already active, but changes committed before its consistent point are not
/// streamed without a snapshot: waiting only for `active` races with slot creation.
async fn active_pid(db: &TestDb, slot: &str) -> i32 {
    let client = db.client().await;
    wait_for_async(
        &format!("slot {slot} active"),
        Duration::from_secs(60),
        || async {
            client
                .query_opt(
                    "SELECT active_pid FROM pg_replication_slots \
                     WHERE slot_name = $1 AND active AND confirmed_flush_lsn IS NOT NULL",
                    &[&slot],
                )
                .await
                .unwrap()
                .map(|r| r.get::<_, i32>(0))
        },
    )
    .await
    .unwrap()
}

/// Waits until nothing streams `slot`.
async fn wait_inactive(db: &TestDb, slot: &str) {
    let client = db.client().await;
    wait_for_async(
        &format!("slot {slot} released"),
        Duration::from_secs(60),
        || async {
            let active: Option<bool> = client
                .query_opt(
                    "SELECT active FROM pg_replication_slots WHERE slot_name = $1",
                    &[&slot],
                )
                .await
                .unwrap()
                .map(|r| r.get(0));
            (active != Some(true)).then_some(())
        },
    )
    .await
    .unwrap();
}

fn names(list: &Json) -> Vec<String> {
    list["pipelines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            format!(
                "{}/{}",
                p["tenant"].as_str().unwrap(),
                p["name"].as_str().unwrap()
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_run_pipelines_from_files_and_the_api_and_change_them_while_others_stream() {
    let (a, b, c) = (source().await, source().await, source().await);
    let serve = service();
    std::fs::write(
        serve.pipelines().join("acme/orders.toml"),
        file_pipeline(&a, &serve.out("orders")),
    )
    .unwrap();
    let mut child = walflow!("serve", "-c", serve.dir.path().join("serve.toml"))
        .env("BOLT_TOKEN", BOLT_TOKEN)
        .env("SERVE_ADMIN_TOKEN", ADMIN_TOKEN)
        .env("RUST_LOG", "info")
        .spawn()
        .unwrap();
    wait_for_async("the API", Duration::from_secs(60), || async {
        request(&serve.addr, "GET", "/health", None, None)
            .ok()
            .map(|_| ())
    })
    .await
    .unwrap();

    // bolt creates its pipeline through the API.
    let created = serve.call(
        "PUT",
        "/api/tenants/bolt/pipelines/items",
        Some(BOLT_TOKEN),
        Some(&api_pipeline(&b)),
    );
    assert_eq!(created.status, 201, "{created:?}");
    let a_slot = format!("{}_slot", a.name());
    let b_slot = format!("{}_slot", b.name());
    let orders_pid = active_pid(&a, &a_slot).await;
    let items_pid = active_pid(&b, &b_slot).await;
    insert(&a, 0..100).await;
    insert(&b, 0..100).await;
    wait_rows(&serve.out("orders"), 0..100).await;
    wait_rows(&serve.api_out("bolt", "items"), 0..100).await;

    // A file added: only its pipeline starts.
    std::fs::write(
        serve.pipelines().join("acme/extra.toml"),
        file_pipeline(&c, &serve.out("extra")),
    )
    .unwrap();
    let c_slot = format!("{}_slot", c.name());
    active_pid(&c, &c_slot).await;
    insert(&c, 0..10).await;
    wait_rows(&serve.out("extra"), 0..10).await;
    // A file changed: only its pipeline restarts, and nothing is lost across the restart.
    insert(&a, 100..200).await;
    let changed = file_pipeline(&a, &serve.out("orders")) + "\n[batch]\nmax_events = 512\n";
    std::fs::write(serve.pipelines().join("acme/orders.toml"), changed).unwrap();
    wait_for_async("orders restarted", Duration::from_secs(60), || async {
        let pid = active_pid(&a, &a_slot).await;
        (pid != orders_pid).then_some(())
    })
    .await
    .unwrap();
    insert(&a, 200..300).await;
    wait_rows(&serve.out("orders"), 0..300).await;
    // A file removed: its pipeline stops and releases its slot.
    std::fs::remove_file(serve.pipelines().join("acme/extra.toml")).unwrap();
    wait_inactive(&c, &c_slot).await;
    assert_eq!(
        active_pid(&b, &b_slot).await,
        items_pid,
        "bolt's pipeline was restarted by acme's changes"
    );

    // Pause and resume through the API: the slot is released, and what was written meanwhile
    // arrives after the resume.
    let paused = serve.call(
        "POST",
        "/api/tenants/bolt/pipelines/items/pause",
        Some(BOLT_TOKEN),
        None,
    );
    assert_eq!(paused.status, 200, "{paused:?}");
    assert_eq!(paused.json()["state"], "paused");
    wait_inactive(&b, &b_slot).await;
    insert(&b, 100..150).await;
    let resumed = serve.call(
        "POST",
        "/api/tenants/bolt/pipelines/items/resume",
        Some(BOLT_TOKEN),
        None,
    );
    assert_eq!(resumed.status, 200, "{resumed:?}");
    wait_rows(&serve.api_out("bolt", "items"), 0..150).await;

    authorization(&serve, &a);
    let status = serve.call(
        "GET",
        "/api/tenants/acme/pipelines/orders",
        Some(ACME_TOKEN),
        None,
    );
    let status = status.json();
    assert_eq!(status["state"], "running", "{status}");
    assert!(status["events_out"].as_u64().unwrap() >= 200, "{status}");

    // A pipeline that cannot start shows as failed with the reason; the others stream on.
    let broken = file_pipeline(&a, &serve.out("broken"))
        .replace(&format!("/{}\"", a.name()), "/no_such_database\"")
        .replace(&a_slot, "broken_slot");
    std::fs::write(serve.pipelines().join("acme/broken.toml"), broken).unwrap();
    let failed = wait_for_async(
        "broken pipeline failed",
        Duration::from_secs(60),
        || async {
            let s = serve.call(
                "GET",
                "/api/tenants/acme/pipelines/broken",
                Some(ACME_TOKEN),
                None,
            );
            (s.status == 200 && s.json()["state"] == "failed").then(|| s.json())
        },
    )
    .await
    .unwrap();
    assert!(
        failed["last_error"]
            .as_str()
            .unwrap()
            .contains("no_such_database"),
        "{failed}"
    );
    assert_eq!(failed["errors"][0]["class"], "fatal", "{failed}");
    status_page(&serve);
    insert(&b, 150..200).await;
    wait_rows(&serve.api_out("bolt", "items"), 0..200).await;
    uploaded_plugins(&serve, &c).await;

    // An incremental snapshot requested through the API re-reads bolt's table.
    let request = json!({"type": "execute-snapshot", "data-collections": ["public.t"]});
    let requested = serve.call(
        "POST",
        "/api/tenants/bolt/pipelines/items/snapshot",
        Some(BOLT_TOKEN),
        Some(&request.to_string()),
    );
    assert_eq!(requested.status, 200, "{requested:?}");
    wait_for_async("the snapshot's rows", Duration::from_secs(60), || async {
        let read = read_records(&serve.api_out("bolt", "items"))
            .iter()
            .filter(|r| r["value"]["op"] == "r")
            .count();
        (read >= 200).then_some(())
    })
    .await
    .unwrap();
    let other = serve.call(
        "POST",
        "/api/tenants/bolt/pipelines/items/snapshot",
        Some(ACME_TOKEN),
        Some(&request.to_string()),
    );
    assert_eq!(other.status, 404, "{other:?}");
    let health = serve.call("GET", "/health", None, None);
    assert_eq!(
        health.status, 503,
        "a failed pipeline is reported: {health:?}"
    );
    std::fs::remove_file(serve.pipelines().join("acme/broken.toml")).unwrap();

    child.terminate();
    let out = child.wait_async(Duration::from_secs(60)).await.unwrap();
    assert_eq!(out.code(), Some(0), "{}", out.describe());
    for secret in [TEST_PASSWORD, ACME_TOKEN, BOLT_TOKEN, ADMIN_TOKEN] {
        assert!(
            !out.stderr.contains(secret) && !out.stdout.contains(secret),
            "a secret in the service's log:\n{}",
            out.describe()
        );
    }
    wait_inactive(&a, &a_slot).await;
    wait_inactive(&b, &b_slot).await;
}

/// A plugin uploaded through the API runs in a pipeline that names it by digest; a file that
/// is not a plugin, another tenant's digest and a path on the host are refused.
async fn uploaded_plugins(serve: &Service, c: &TestDb) {
    let wasm = std::fs::read(walflow_tests::plugins::plugin("tag_v1")).unwrap();
    let uploaded = request_bytes(serve, "/api/tenants/bolt/plugins", BOLT_TOKEN, &wasm);
    assert_eq!(uploaded.status, 201, "{uploaded:?}");
    let digest = uploaded.json()["digest"].as_str().unwrap().to_string();
    assert!(digest.starts_with("sha256:"), "{digest}");
    let junk = request_bytes(
        serve,
        "/api/tenants/bolt/plugins",
        BOLT_TOKEN,
        b"\0asm junk",
    );
    assert_eq!(junk.status, 400, "{junk:?}");
    assert!(
        junk.json()["error"]
            .as_str()
            .unwrap()
            .contains("not a plugin"),
        "{junk:?}"
    );
    let not_ours = std::fs::read(walflow_tests::plugins::plugin("not-a-plugin")).unwrap();
    let other_world = request_bytes(serve, "/api/tenants/bolt/plugins", BOLT_TOKEN, &not_ours);
    assert_eq!(
        other_world.status, 400,
        "a component of another world: {other_world:?}"
    );
    let elsewhere = request_bytes(serve, "/api/tenants/bolt/plugins", ACME_TOKEN, &wasm);
    assert_eq!(elsewhere.status, 404, "{elsewhere:?}");

    c.client()
        .await
        .batch_execute("ALTER TABLE t ADD COLUMN version text")
        .await
        .unwrap();
    let with_plugin = |path: &str, slot: &str| {
        let mut config: Json = serde_json::from_str(&api_pipeline(c)).unwrap();
        config["source"]["slot"] = json!(slot);
        config["plugins"] = json!([{ "path": path }]);
        config.to_string()
    };
    let put = |tenant: &str, token: &str, body: String| {
        let path = format!("/api/tenants/{tenant}/pipelines/tagged");
        serve.call("PUT", &path, Some(token), Some(&body))
    };
    let foreign = put("acme", ACME_TOKEN, with_plugin(&digest, "acme_tagged_slot"));
    assert_eq!(foreign.status, 400, "another tenant's upload: {foreign:?}");
    assert!(foreign.body.contains("no uploaded plugin"), "{foreign:?}");
    let host_path = put(
        "bolt",
        BOLT_TOKEN,
        with_plugin("/etc/passwd", "tagged_slot"),
    );
    assert_eq!(host_path.status, 400, "{host_path:?}");
    assert!(host_path.body.contains("digest"), "{host_path:?}");
    let created = put("bolt", BOLT_TOKEN, with_plugin(&digest, "tagged_slot"));
    assert_eq!(created.status, 201, "{created:?}");
    active_pid(c, "tagged_slot").await;
    insert(c, 1000..1010).await;
    wait_rows(&serve.api_out("bolt", "tagged"), 1000..1010).await;
    let records = read_records(&serve.api_out("bolt", "tagged"));
    assert!(
        records
            .iter()
            .all(|r| r["value"]["after"]["version"] == "v1"),
        "the uploaded plugin did not run: {records:?}"
    );
    sink_plugin_hosts(serve, c);
    let deleted = serve.call(
        "DELETE",
        "/api/tenants/bolt/pipelines/tagged",
        Some(BOLT_TOKEN),
        None,
    );
    assert_eq!(deleted.status, 204, "{deleted:?}");
    wait_inactive(c, "tagged_slot").await;
}

/// A sink plugin of a pipeline from the API may reach only its tenant's `allow_hosts`.
fn sink_plugin_hosts(serve: &Service, c: &TestDb) {
    let wasm = std::fs::read(walflow_tests::plugins::plugin("webhook_sink")).unwrap();
    let uploaded = request_bytes(serve, "/api/tenants/bolt/plugins", BOLT_TOKEN, &wasm);
    assert_eq!(uploaded.status, 201, "{uploaded:?}");
    let digest = uploaded.json()["digest"].as_str().unwrap().to_string();
    let hook = |host: &str| {
        let mut config: Json = serde_json::from_str(&api_pipeline(c)).unwrap();
        config["source"]["slot"] = json!("hook_slot");
        config["sinks"] = json!([{
            "type": "plugin",
            "path": digest,
            "allow_hosts": [host],
            "config": {"url": format!("http://{host}/hook")},
        }]);
        config.to_string()
    };
    let path = "/api/tenants/bolt/pipelines/hook";
    let refused = serve.call(
        "PUT",
        path,
        Some(BOLT_TOKEN),
        Some(&hook("evil.example.com")),
    );
    assert_eq!(refused.status, 400, "{refused:?}");
    assert!(
        refused.body.contains("may not reach evil.example.com"),
        "{refused:?}"
    );
    let allowed = serve.call("PUT", path, Some(BOLT_TOKEN), Some(&hook("127.0.0.1:9")));
    assert_eq!(allowed.status, 201, "{allowed:?}");
    let deleted = serve.call("DELETE", path, Some(BOLT_TOKEN), None);
    assert_eq!(deleted.status, 204, "{deleted:?}");
}

/// POSTs `bytes` (a plugin upload).
fn request_bytes(serve: &Service, path: &str, token: &str, bytes: &[u8]) -> Answer {
    let post = ("POST", path);
    walflow_tests::http::send(&serve.addr, post, Some(token), ("application/wasm", bytes)).unwrap()
}

/// The status page in a real browser: a tenant's token shows its pipelines only, with their
/// state, a throughput chart and a failed one's last errors; without a token it asks for one.
fn status_page(serve: &Service) {
    let page = |token: Option<&str>| {
        let url = match token {
            Some(t) => format!("http://{}/#token={t}", serve.addr),
            None => format!("http://{}/", serve.addr),
        };
        walflow_tests::browser::dom_after_scripts(&url, Duration::from_secs(5)).unwrap()
    };
    let acme = page(Some(ACME_TOKEN));
    assert!(acme.contains("data-pipeline=\"acme/orders\""), "{acme}");
    let broken = acme
        .split("data-pipeline=\"acme/broken\"")
        .nth(1)
        .and_then(|row| row.split("</tr>").next())
        .unwrap_or_else(|| panic!("no row for the failed pipeline: {acme}"));
    assert!(
        broken.contains("<ol><li><time") && broken.contains("no_such_database"),
        "the failure is not listed: {broken}"
    );
    assert!(acme.contains("class=\"state running\""), "{acme}");
    assert!(acme.contains("class=\"throughput\""), "no chart: {acme}");
    assert!(
        !acme.contains("bolt"),
        "another tenant's pipeline on the page: {acme}"
    );
    let admin = page(Some(ADMIN_TOKEN));
    assert!(
        admin.contains("data-pipeline=\"bolt/items\"")
            && admin.contains("data-pipeline=\"acme/orders\""),
        "{admin}"
    );
    let anonymous = page(None);
    assert!(
        anonymous.contains("id=\"login\" style=\"display: block;\""),
        "{anonymous}"
    );
    assert!(!anonymous.contains("data-pipeline"), "{anonymous}");
}

/// Every endpoint with no token, a wrong one and the other tenant's; bad input answered with
/// one sentence; nothing secret in any answer.
fn authorization(serve: &Service, a: &TestDb) {
    let endpoints = [
        ("GET", "/api/pipelines"),
        ("GET", "/api/tenants/bolt/pipelines/items"),
        ("PUT", "/api/tenants/bolt/pipelines/items"),
        ("DELETE", "/api/tenants/bolt/pipelines/items"),
        ("POST", "/api/tenants/bolt/pipelines/items/pause"),
        ("POST", "/api/tenants/bolt/pipelines/items/resume"),
        ("GET", "/api/schema"),
        ("GET", "/metrics"),
    ];
    let mut answers = Vec::new();
    for (method, path) in endpoints {
        for token in [None, Some("not-a-token-at-all-000")] {
            let answer = serve.call(method, path, token, Some("{}"));
            assert_eq!(
                answer.status, 401,
                "{method} {path} with {token:?}: {answer:?}"
            );
            assert!(
                answer
                    .headers
                    .to_ascii_lowercase()
                    .contains("www-authenticate: bearer")
            );
            answers.push(answer);
        }
    }
    // acme's token on bolt's pipeline: the answer of a pipeline that does not exist.
    let missing = serve.call(
        "GET",
        "/api/tenants/acme/pipelines/nope",
        Some(ACME_TOKEN),
        None,
    );
    assert_eq!(missing.status, 404);
    for (method, path) in &endpoints[1..6] {
        assert!(path.contains("/bolt/"));
        let answer = serve.call(method, path, Some(ACME_TOKEN), Some("{}"));
        assert_eq!(answer.status, 404, "{method} {path}: {answer:?}");
        assert_eq!(
            answer.json()["error"]
                .as_str()
                .unwrap()
                .replace("`items` in tenant `bolt`", "X"),
            missing.json()["error"]
                .as_str()
                .unwrap()
                .replace("`nope` in tenant `acme`", "X"),
            "another tenant's pipeline answers differently from a missing one"
        );
        answers.push(answer);
    }
    let acme = serve.call("GET", "/api/pipelines", Some(ACME_TOKEN), None);
    assert_eq!(names(&acme.json()), ["acme/orders"]);
    let admin = serve.call("GET", "/api/pipelines", Some(ADMIN_TOKEN), None);
    assert_eq!(names(&admin.json()), ["acme/orders", "bolt/items"]);
    let bolt = serve.call(
        "GET",
        "/api/tenants/bolt/pipelines/items",
        Some(BOLT_TOKEN),
        None,
    );
    assert_eq!(bolt.status, 200);
    answers.extend([acme, admin, bolt]);
    // Metrics, labelled by tenant and pipeline, only the caller's.
    let mine = serve.call("GET", "/metrics", Some(ACME_TOKEN), None);
    assert_eq!(mine.status, 200);
    assert!(
        mine.body.contains(
            "walflow_events_out_total{tenant=\"acme\",pipeline=\"orders\",table=\"public.t\"}"
        ),
        "{}",
        mine.body
    );
    assert!(
        !mine.body.contains("bolt"),
        "another tenant's metrics: {}",
        mine.body
    );
    let all = serve.call("GET", "/metrics", Some(ADMIN_TOKEN), None);
    assert!(all.body.contains("pipeline=\"items\"") && all.body.contains("pipeline=\"orders\""));
    assert_eq!(
        all.body
            .matches("# TYPE walflow_events_out counter")
            .count(),
        1
    );
    answers.extend([mine, all]);

    // Bad input: one sentence, and the running pipelines untouched.
    let refused = |name: &str, body: String, code: u16, says: &str| {
        let path = format!("/api/tenants/acme/pipelines/{name}");
        let answer = serve.call("PUT", &path, Some(ACME_TOKEN), Some(&body));
        assert_eq!(answer.status, code, "{name}: {answer:?}");
        let error = answer.json()["error"].as_str().unwrap().to_string();
        assert!(error.contains(says), "{name}: {error}");
        answer
    };
    let same_slot = api_pipeline(a);
    answers.push(refused("twin", same_slot.clone(), 409, "already uses slot"));
    answers.push(refused("Bad_Name", same_slot.clone(), 400, "not allowed"));
    let unknown_key = same_slot.replace("\"snapshot\"", "\"snapshots\"");
    answers.push(refused("typo", unknown_key, 400, "snapshots"));
    let env_password = json!({
        "source": {"url": "postgres://u@h/db", "password_env": "SERVE_ADMIN_TOKEN"},
        "sinks": [{"type": "stdout"}],
    });
    answers.push(refused(
        "env",
        env_password.to_string(),
        400,
        "password_env",
    ));
    answers.push(refused(
        "orders",
        same_slot.clone(),
        409,
        "comes from a file",
    ));
    let mut host_file: Json = serde_json::from_str(&same_slot).unwrap();
    host_file["source"]["slot"] = json!("cert_slot");
    host_file["source"]["sslrootcert_pem"] = Json::Null;
    host_file["source"]["sslrootcert"] = json!("/etc/ssl/certs/ca-certificates.crt");
    answers.push(refused(
        "cert",
        host_file.to_string(),
        400,
        "sslrootcert_pem",
    ));
    let mut tunnelled: Json = serde_json::from_str(&same_slot).unwrap();
    tunnelled["source"]["slot"] = json!("ssh_slot");
    tunnelled["source"]["ssh"] = json!({
        "host": "bastion", "user": "tunnel", "private_key_file": "/root/.ssh/id_ed25519",
        "known_hosts_file": "/root/.ssh/known_hosts",
    });
    answers.push(refused("ssh", tunnelled.to_string(), 400, "source.ssh"));
    // Budgets: admission control refuses what would take the tenant over its limits.
    let mut greedy: Json = serde_json::from_str(&same_slot).unwrap();
    greedy["source"]["slot"] = json!("greedy_slot");
    let wasm = std::fs::read(walflow_tests::plugins::plugin("passthrough")).unwrap();
    let uploaded = request_bytes(serve, "/api/tenants/acme/plugins", ACME_TOKEN, &wasm);
    let digest = uploaded.json()["digest"].as_str().unwrap().to_string();
    greedy["plugins"] = json!([{"path": digest, "memory_mb": 2048}]);
    answers.push(refused(
        "greedy",
        greedy.to_string(),
        409,
        "MiB of plugin memory",
    ));
    let mut hungry: Json = serde_json::from_str(&same_slot).unwrap();
    hungry["source"]["slot"] = json!("hungry_slot");
    hungry["memory"] = json!({"budget_mb": 400});
    answers.push(refused(
        "hungry",
        hungry.to_string(),
        409,
        "MiB of event memory",
    ));
    for answer in &answers {
        for secret in [TEST_PASSWORD, ACME_TOKEN, BOLT_TOKEN, ADMIN_TOKEN] {
            assert!(
                !answer.body.contains(secret),
                "a secret in an answer: {answer:?}"
            );
        }
    }
}

/// A source whose `t` has an `action` column, which tells the misbehave plugin what to do.
async fn misbehaving_source() -> TestDb {
    let db = source().await;
    db.client()
        .await
        .batch_execute("ALTER TABLE t ADD COLUMN action text")
        .await
        .unwrap();
    db
}

/// A service with tenants `hog` (plugin CPU budget `hog_cpu_ms_per_s`) and `calm`, and their
/// pipeline directories.
fn hog_and_calm(hog_cpu_ms_per_s: u64) -> Service {
    let dir = tempfile::Builder::new()
        .prefix("walflow-serve-")
        .tempdir()
        .unwrap();
    let addr = format!("127.0.0.1:{}", walflow_tests::free_port());
    let text = format!(
        "listen = \"{addr}\"\npipelines_dir = \"pipelines\"\nscan_interval = \"200ms\"\n\n\
         [[tenants]]\nname = \"hog\"\ntoken = \"{ACME_TOKEN}\"\nplugin_cpu_ms_per_s = {hog_cpu_ms_per_s}\n\n\
         [[tenants]]\nname = \"calm\"\ntoken = \"{BOLT_TOKEN}\"\n"
    );
    std::fs::write(dir.path().join("serve.toml"), text).unwrap();
    let serve = Service { addr, dir };
    for tenant in ["hog", "calm"] {
        std::fs::create_dir_all(serve.pipelines().join(tenant)).unwrap();
    }
    serve
}

/// A `[[plugins]]` entry for the built plugin `name`, with `extra` settings.
fn plugin_entry(name: &str, extra: &str) -> String {
    let path = walflow_tests::plugins::plugin(name);
    format!(
        "\n[[plugins]]\npath = {}\n{extra}\n",
        walflow_tests::config_file::toml_string(&path.to_string_lossy())
    )
}

/// A tenant whose plugin loops, allocates without bound and panics is held to its CPU budget —
/// throttled, never failed — and catches up, while another tenant streams on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_misbehaving_tenant_is_throttled_and_contained_while_another_streams_on() {
    let (hog_db, calm_db) = (misbehaving_source().await, source().await);
    let serve = hog_and_calm(200);
    let hog = file_pipeline(&hog_db, &serve.out("hog"))
        + &plugin_entry(
            "misbehave",
            "on_error = \"skip\"\ntimeout_ms = 100\nmemory_mb = 64",
        );
    std::fs::write(serve.pipelines().join("hog/p.toml"), hog).unwrap();
    std::fs::write(
        serve.pipelines().join("calm/p.toml"),
        file_pipeline(&calm_db, &serve.out("calm")),
    )
    .unwrap();
    let mut child = walflow!("serve", "-c", serve.dir.path().join("serve.toml"))
        .env("RUST_LOG", "info")
        .spawn()
        .unwrap();
    active_pid(&hog_db, &format!("{}_slot", hog_db.name())).await;
    active_pid(&calm_db, &format!("{}_slot", calm_db.name())).await;

    // Twenty transactions, each with a row that loops until the 100 ms deadline: 2 s of plugin
    // time against a budget of 200 ms per second. Some rows allocate 1 GiB or panic instead.
    let hog_client = hog_db.client().await;
    let started = std::time::Instant::now();
    for i in 0..20 {
        let bad = match i % 5 {
            3 => "alloc",
            4 => "panic",
            _ => "loop",
        };
        hog_client
            .batch_execute(&format!(
                "BEGIN; INSERT INTO t VALUES ({}, 'bad', '{bad}'), ({}, 'ok', NULL); COMMIT;",
                1000 + i,
                i
            ))
            .await
            .unwrap();
    }
    // Later transactions come after the budget is spent: they wait for it to refill.
    for i in 20..25 {
        hog_client
            .batch_execute(&format!("INSERT INTO t VALUES ({i}, 'ok', NULL)"))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    insert(&calm_db, 0..500).await;
    wait_rows(&serve.out("calm"), 0..500).await;
    let hog_status = || {
        serve.call(
            "GET",
            "/api/tenants/hog/pipelines/p",
            Some(ACME_TOKEN),
            None,
        )
    };
    let mut states = BTreeSet::new();
    wait_for_async("the hog's good rows", Duration::from_secs(120), || {
        states.insert(hog_status().json()["state"].as_str().unwrap().to_string());
        async {
            ids_in(&serve.out("hog"))
                .is_superset(&(0..25).collect())
                .then_some(())
        }
    })
    .await
    .unwrap_or_else(|e| {
        let log = child.stderr();
        let tail: Vec<&str> = log.lines().rev().take(80).collect();
        let delivered = ids_in(&serve.out("hog"));
        panic!(
            "{e}; delivered {delivered:?}; states {states:?}; {}\nlog tail:\n{}",
            hog_status().json(),
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        )
    });
    // Twelve rows ran into their 100 ms deadline: up to 1.2 s of CPU was charged. A batch may
    // overrun the budget, but the next one waits until it is paid back: a row written now
    // arrives only once the 0.2 s of burst plus 0.2 s per second cover everything charged.
    hog_client
        .batch_execute("INSERT INTO t VALUES (25, 'ok', NULL)")
        .await
        .unwrap();
    wait_rows(&serve.out("hog"), 25..26).await;
    let elapsed = started.elapsed().as_secs_f64();
    let status = hog_status().json();
    assert_eq!(states, BTreeSet::from(["running".to_string()]), "{status}");
    let throttled = status["tenant_throttled_seconds"].as_f64().unwrap();
    let spent = status["tenant_plugin_seconds"].as_f64().unwrap();
    // (CPU time is charged: on a busy machine a 100 ms deadline may hold less of it.)
    assert!(spent >= 0.5, "the looping rows were not charged: {status}");
    assert!(
        throttled > 0.0,
        "the hog never waited for its budget: {status}"
    );
    assert!(
        spent <= 0.2 + 0.2 * elapsed + 0.05,
        "the hog ran a batch before paying back its budget ({elapsed:.1}s): {status}"
    );
    assert!(
        ids_in(&serve.out("hog")).iter().all(|id| *id < 1000),
        "a misbehaving row was delivered"
    );
    let calm = serve.call(
        "GET",
        "/api/tenants/calm/pipelines/p",
        Some(BOLT_TOKEN),
        None,
    );
    assert_eq!(calm.json()["tenant_throttled_seconds"], 0.0, "{calm:?}");
    child.terminate();
    let out = child.wait_async(Duration::from_secs(60)).await.unwrap();
    assert_eq!(out.code(), Some(0), "{}", out.describe());
}

/// Writes `rounds` transactions into `t` of `db`, one every 50 ms: ten inserts, an update of an
/// earlier row and a delete, so replaying the sink must follow changes, not just collect rows.
/// Returns the WAL position after the last one.
async fn paced_changes(db: &TestDb, first_round: i32, rounds: i32) -> String {
    let client = db.client().await;
    for round in first_round..first_round + rounds {
        let base = round * 10;
        client
            .batch_execute(&format!(
                "BEGIN;
                 INSERT INTO t SELECT g, 'v' || g FROM generate_series({base}, {}) g;
                 UPDATE t SET v = 'updated' WHERE id = {};
                 DELETE FROM t WHERE id = {};
                 COMMIT;",
                base + 9,
                (base / 2).max(0),
                base + 3
            ))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    client
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .unwrap()
        .get(0)
}

/// Waits until `tenant`'s pipeline `name` has acknowledged `lsn`.
async fn wait_acked(serve: &Service, token: &str, tenant: &str, name: &str, lsn: &str) {
    let target = walflow::event::Lsn::parse(lsn).unwrap();
    let path = format!("/api/tenants/{tenant}/pipelines/{name}");
    wait_for_async(
        &format!("{tenant}/{name} at {lsn}"),
        Duration::from_secs(120),
        || async {
            let status = serve.call("GET", &path, Some(token), None).json();
            let acked = status["acked_lsn"]
                .as_str()
                .and_then(walflow::event::Lsn::parse);
            acked.is_some_and(|a| a >= target).then_some(())
        },
    )
    .await
    .unwrap();
}

/// Three calm pipelines under a fixed offered load: how long until all of it is acknowledged.
async fn calm_phase(serve: &Service, calm: &[TestDb], first_round: i32) -> Duration {
    let started = std::time::Instant::now();
    let ends =
        futures::future::join_all(calm.iter().map(|db| paced_changes(db, first_round, 40))).await;
    for (i, end) in ends.iter().enumerate() {
        wait_acked(serve, BOLT_TOKEN, "calm", &format!("p{i}"), end).await;
    }
    started.elapsed()
}

/// Two tenants with three pipelines each; while the calm tenant's pipelines stream, the other's
/// plugins loop, allocate without bound and panic. The calm pipelines deliver every change
/// (replaying their sinks rebuilds their tables) at nearly the rate they did before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_tenants_misbehaving_plugins_leave_a_tenants_pipelines_whole_and_on_time() {
    let mut calm = Vec::new();
    let mut hog = Vec::new();
    for _ in 0..3 {
        calm.push(source().await);
        hog.push(misbehaving_source().await);
    }
    let serve = hog_and_calm(500);
    for (tenant, dbs) in [("calm", &calm), ("hog", &hog)] {
        for (i, db) in dbs.iter().enumerate() {
            let chain = match tenant {
                "calm" => plugin_entry("passthrough", ""),
                _ => plugin_entry(
                    "misbehave",
                    "on_error = \"skip\"\ntimeout_ms = 200\nmemory_mb = 64",
                ),
            };
            let text = file_pipeline(db, &serve.out(&format!("{tenant}{i}"))) + &chain;
            std::fs::write(serve.pipelines().join(format!("{tenant}/p{i}.toml")), text).unwrap();
        }
    }
    let mut child = walflow!("serve", "-c", serve.dir.path().join("serve.toml"))
        .env("RUST_LOG", "info")
        .spawn()
        .unwrap();
    for db in calm.iter().chain(&hog) {
        active_pid(db, &format!("{}_slot", db.name())).await;
    }

    let before = calm_phase(&serve, &calm, 0).await;
    let stop_hog = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut hogging = Vec::new();
    for db in &hog {
        let client = db.client().await;
        let stop = stop_hog.clone();
        hogging.push(tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let action = ["loop", "alloc", "panic"][i % 3];
                client
                    .batch_execute(&format!(
                        "INSERT INTO t VALUES ({}, 'bad', '{action}'), ({}, 'ok', NULL)",
                        100_000 + i,
                        i
                    ))
                    .await
                    .unwrap();
                i += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let during = calm_phase(&serve, &calm, 1000).await;
    stop_hog.store(true, std::sync::atomic::Ordering::Relaxed);
    for h in hogging {
        h.await.unwrap();
    }
    let ratio = before.as_secs_f64() / during.as_secs_f64();
    eprintln!(
        "calm delivery rate while the hog misbehaves: {ratio:.2} of before ({before:?} vs {during:?})"
    );
    assert!(
        ratio >= 0.5,
        "the calm tenant slowed to {ratio:.2} of its rate ({before:?} vs {during:?})"
    );
    for (i, db) in calm.iter().enumerate() {
        let records = read_records(&serve.out(&format!("calm{i}")));
        walflow_tests::replay::assert_rebuilds(&db.client().await, &records, &[("t", &[])]).await;
        let status = serve
            .call(
                "GET",
                &format!("/api/tenants/calm/pipelines/p{i}"),
                Some(BOLT_TOKEN),
                None,
            )
            .json();
        assert_eq!(status["state"], "running", "{status}");
        assert_eq!(status["restarts"], 0, "{status}");
    }
    for i in 0..3 {
        let status = serve
            .call(
                "GET",
                &format!("/api/tenants/hog/pipelines/p{i}"),
                Some(ACME_TOKEN),
                None,
            )
            .json();
        assert_eq!(
            status["state"], "running",
            "the hog's pipeline failed instead of skipping: {status}"
        );
    }
    child.terminate();
    let out = child.wait_async(Duration::from_secs(60)).await.unwrap();
    assert_eq!(out.code(), Some(0), "{}", out.describe());
}
