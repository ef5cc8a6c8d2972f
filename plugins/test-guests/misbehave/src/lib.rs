//! A transform that misbehaves on request, for the host's failure tests. The after row's
//! `action` column says what to do with that event: `loop` spins forever, `alloc` asks for
//! 1 GiB, `panic` panics, `fail` returns an error; anything else passes untouched.

#[walflow_sdk::transform]
fn misbehave(event: &mut walflow_sdk::Event) -> Result<(), String> {
    let action = event
        .after()
        .get("action")
        .and_then(|v| v.as_str())
        .unwrap_or("")
        .to_string();
    match action.as_str() {
        "loop" => {
            let mut n: u64 = 0;
            loop {
                n = std::hint::black_box(n.wrapping_add(1));
            }
        }
        "alloc" => {
            let big = vec![7u8; 1 << 30];
            std::hint::black_box(&big);
            Ok(())
        }
        "panic" => panic!("asked to panic"),
        "fail" => Err("asked to fail".to_string()),
        _ => Ok(()),
    }
}
