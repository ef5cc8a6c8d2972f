//! The service's `/metrics`: every pipeline's metrics (each sample labelled with its tenant and
//! pipeline) as one OpenMetrics exposition.
//!
//! Each pipeline keeps its own registry, so a removed pipeline's series simply disappear with
//! it. OpenMetrics wants each metric family once, so the pipelines' expositions are merged by
//! family: the first one's `# HELP`/`# TYPE`/`# UNIT` lines, then the samples of all of them.

/// One exposition made of `expositions` (each an OpenMetrics text ending in `# EOF`).
pub fn merge(expositions: &[String]) -> String {
    let mut families: Vec<Family> = Vec::new();
    for text in expositions {
        for family in families_of(text) {
            match families.iter_mut().find(|f| f.name == family.name) {
                Some(known) => known.samples.extend(family.samples),
                None => families.push(family),
            }
        }
    }
    let mut out = String::new();
    for f in &families {
        for line in f.header.iter().chain(&f.samples) {
            out.push_str(line);
            out.push('\n');
        }
    }
    out.push_str("# EOF\n");
    out
}

/// A metric family: its name, header lines and samples.
struct Family<'a> {
    name: &'a str,
    header: Vec<&'a str>,
    samples: Vec<&'a str>,
}

/// The families of one exposition, in order.
fn families_of(text: &str) -> Vec<Family<'_>> {
    let mut families: Vec<Family> = Vec::new();
    for line in text.lines() {
        if line == "# EOF" || line.is_empty() {
            continue;
        }
        if let Some(name) = header_name(line) {
            match families.last_mut() {
                Some(f) if f.name == name => f.header.push(line),
                _ => families.push(Family {
                    name,
                    header: vec![line],
                    samples: Vec::new(),
                }),
            }
        } else if let Some(f) = families.last_mut() {
            f.samples.push(line);
        }
    }
    families
}

/// The family a `# HELP`, `# TYPE` or `# UNIT` line is about.
fn header_name(line: &str) -> Option<&str> {
    let rest = line
        .strip_prefix("# HELP ")
        .or_else(|| line.strip_prefix("# TYPE "))
        .or_else(|| line.strip_prefix("# UNIT "))?;
    rest.split_whitespace().next()
}

#[cfg(test)]
mod tests {
    use super::merge;
    use walflow_core::metrics::Metrics;

    #[test]
    fn families_appear_once_with_every_pipelines_samples() {
        let a = Metrics::labelled(&[("tenant", "acme"), ("pipeline", "orders")]);
        let b = Metrics::labelled(&[("tenant", "bolt"), ("pipeline", "items")]);
        a.record_flush();
        b.record_flush();
        b.record_flush();
        let merged = merge(&[a.render().unwrap(), b.render().unwrap()]);
        assert_eq!(
            merged.matches("# TYPE walflow_sink_acks counter").count(),
            1,
            "{merged}"
        );
        assert!(
            merged.contains("walflow_sink_acks_total{tenant=\"acme\",pipeline=\"orders\"} 1"),
            "{merged}"
        );
        assert!(
            merged.contains("walflow_sink_acks_total{tenant=\"bolt\",pipeline=\"items\"} 2"),
            "{merged}"
        );
        assert_eq!(merged.matches("# EOF").count(), 1);
        assert!(merged.ends_with("# EOF\n"));
    }
}
