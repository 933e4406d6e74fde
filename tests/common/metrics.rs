//! Reading the server's `/metrics` text (Prometheus exposition format) and checking many of
//! its samples at once.

/// The value of the unlabelled-or-exactly-labelled sample `name` in a metrics text, if present.
pub fn metric_sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// The value of the unlabelled-or-exactly-labelled sample `name` in a metrics text, 0 if absent.
pub fn metric_value(text: &str, name: &str) -> f64 {
    metric_sample(text, name).unwrap_or(0.0)
}

/// Checks every `(sample, expected value)` of `expected` against a metrics text (a sample
/// absent from the text counts as 0, as `metric_value` reads it) and fails once, naming every
/// sample that differs.
pub fn assert_metrics(text: &str, expected: &[(&str, f64)]) {
    let mismatches: Vec<String> = expected
        .iter()
        .filter_map(|&(name, want)| {
            let sample = metric_sample(text, name);
            let got = sample.unwrap_or(0.0);
            (got != want).then(|| match sample {
                Some(got) => format!("{name}: expected {want}, got {got}"),
                None => format!("{name}: expected {want}, got 0 (absent)"),
            })
        })
        .collect();
    assert!(
        mismatches.is_empty(),
        "{} metric(s) differ:\n  {}\n--- the metrics text ---\n{text}",
        mismatches.len(),
        mismatches.join("\n  ")
    );
}
