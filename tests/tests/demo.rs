//! `walflow demo` runs to completion from a clean checkout: it starts its own PostgreSQL,
//! streams through the built-in plugins, and stops by itself.

use std::time::Duration;

use serde_json::Value as Json;
use walflow_tests::walflow;

#[test]
fn demo_streams_through_the_built_in_plugins_and_stops_by_itself() {
    let plugins = walflow_tests::plugins::plugins_dir();
    let output = walflow!("demo", "--duration", "2s", "--plugins-dir", &plugins)
        .output(Duration::from_secs(180))
        .unwrap();
    assert!(output.status.success(), "{}", output.describe());
    let records: Vec<Json> = output
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("every stdout line is a JSON record"))
        .collect();
    let tables: Vec<&str> = records
        .iter()
        .filter_map(|r| r["value"]["source"]["table"].as_str())
        .filter(|t| !t.is_empty())
        .collect();
    assert!(
        tables.contains(&"customers") && tables.contains(&"orders"),
        "{}",
        output.describe()
    );
    assert!(
        !tables.contains(&"audit"),
        "table-filter let internal.audit through"
    );
    let customer = records
        .iter()
        .find(|r| r["value"]["source"]["table"] == "customers" && r["value"]["op"] == "c")
        .unwrap();
    assert_eq!(
        customer["topic"], "shop_cdc.public.customers",
        "topic-name with the database prefix"
    );
    let avatar = customer["value"]["after"]["avatar"].as_str().unwrap();
    assert!(
        avatar.starts_with("cafe") && avatar.chars().all(|c| c.is_ascii_hexdigit()),
        "binary-repr as hex: {avatar}"
    );
    // public.orders has REPLICA IDENTITY FULL: its key is still the primary key alone.
    let order = records
        .iter()
        .find(|r| r["value"]["source"]["table"] == "orders" && r["value"]["op"] == "u")
        .unwrap();
    let key = order["key"].as_object().unwrap();
    assert_eq!(key.keys().collect::<Vec<_>>(), ["id"], "{order}");
    assert!(
        order["value"]["before"]["status"].is_string(),
        "FULL identity sends the whole old row"
    );
    for op in ["c", "u", "d"] {
        assert!(
            records.iter().any(|r| r["value"]["op"] == op),
            "no `{op}` event in the demo output"
        );
    }
    assert!(output.stderr.contains("done."), "{}", output.describe());
}
