//! Reading Prometheus/OpenMetrics text as a test would: find a sample by name and labels.

use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// Parses the samples of an exposition (comments skipped). Label values are unescaped for
/// `\"`, `\\` and `\n`.
pub fn parse(text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let (name_labels, rest) = match line.find('{') {
            Some(_) => {
                let close = line.rfind('}').expect("closing brace");
                (&line[..close + 1], &line[close + 1..])
            }
            None => {
                let sp = line.find(' ').expect("value");
                (&line[..sp], &line[sp..])
            }
        };
        let value: f64 = rest
            .split_whitespace()
            .next()
            .expect("value")
            .parse()
            .expect("numeric value");
        let (name, labels) = match name_labels.find('{') {
            None => (name_labels.to_owned(), BTreeMap::new()),
            Some(open) => (
                name_labels[..open].to_owned(),
                parse_labels(&name_labels[open + 1..name_labels.len() - 1]),
            ),
        };
        out.push(Sample {
            name,
            labels,
            value,
        });
    }
    out
}

fn parse_labels(s: &str) -> BTreeMap<String, String> {
    let mut map = BTreeMap::new();
    let mut chars = s.chars().peekable();
    loop {
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if key.is_empty() {
            break;
        }
        assert_eq!(chars.next(), Some('"'));
        let mut value = String::new();
        while let Some(c) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some('n') => value.push('\n'),
                    Some(other) => value.push(other),
                    None => break,
                },
                '"' => break,
                c => value.push(c),
            }
        }
        map.insert(key.trim_start_matches(',').trim().to_owned(), value);
        if chars.peek() == Some(&',') {
            chars.next();
        }
    }
    map
}

/// The value of the sample `name` whose labels include all of `labels`.
pub fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
}
