//! The final report: one JSON object (`--json`, for scripts and
//! BENCHMARKS.md) or the same values as aligned `name  value` lines.

/// The final report: one JSON object with `--json`, else aligned
/// `name  value` lines (nested names dotted, e.g. `latency_us.p99`).
pub fn print_report(v: &serde_json::Value, json: bool) {
    if json {
        println!("{v}");
        return;
    }
    print!("{}", text(v));
}

/// The report as `name  value` text lines (see `print_report`).
pub fn text(v: &serde_json::Value) -> String {
    let mut lines = Vec::new();
    flatten("", v, &mut lines);
    let width = lines.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    lines.iter().map(|(k, v)| format!("{k:<width$}  {v}\n")).collect()
}

fn flatten(prefix: &str, v: &serde_json::Value, out: &mut Vec<(String, String)>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                let name = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&name, v, out);
            }
        }
        serde_json::Value::Number(n) if n.is_f64() => {
            let f = n.as_f64().unwrap_or(0.0);
            out.push((
                prefix.to_string(),
                if f.abs() >= 100.0 {
                    format!("{f:.0}")
                } else {
                    format!("{f:.3}")
                },
            ));
        }
        serde_json::Value::Null => out.push((prefix.to_string(), "-".into())),
        other => out.push((prefix.to_string(), other.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_values_are_dotted_and_aligned() {
        let v = serde_json::json!({"received": 10, "latency_us": {"p50": 1234.5678, "p99": 1.23456}, "pid": null});
        assert_eq!(
            text(&v),
            "latency_us.p50  1235\nlatency_us.p99  1.235\npid             -\nreceived        10\n"
        );
    }
}
