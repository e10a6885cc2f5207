//! Reads the nodes' release records (`--release-record`, written by
//! `agent::audit`) and checks the promises of the output rule after the
//! fact: no two nodes ever release output in the same generation, no node
//! releases in a generation after another node released in a later one
//! (two primaries, whatever their generations), and no frame leaves a
//! protected primary before the backup acknowledged its entry.

use anyhow::{bail, Context, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A batch released; `via_ack` tells what allowed it.
    Release { via_ack: bool },
    /// The backup acknowledged every entry up to `seq`.
    Ack,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Line {
    /// Microseconds since the Unix epoch.
    pub micros: u64,
    pub kind: Kind,
    pub generation: u64,
    pub seq: u64,
}

/// One node's record: its name and its lines, oldest first.
#[derive(Clone, Debug)]
pub struct Record {
    pub node: String,
    pub lines: Vec<Line>,
}

impl Record {
    /// Parses a record file's text. A node killed in the middle of a write
    /// leaves a last line without its newline: it is ignored.
    pub fn parse(node: &str, text: &str) -> Result<Record> {
        let complete = match text.rfind('\n') {
            Some(end) => &text[..end],
            None => "",
        };
        let lines = complete
            .lines()
            .filter(|l| !l.is_empty())
            .map(|l| parse_line(l).with_context(|| format!("{node}: record line {l:?}")))
            .collect::<Result<_>>()?;
        Ok(Record {
            node: node.to_string(),
            lines,
        })
    }

    pub fn releases(&self) -> impl Iterator<Item = &Line> {
        self.lines
            .iter()
            .filter(|l| matches!(l.kind, Kind::Release { .. }))
    }
}

fn parse_line(line: &str) -> Result<Line> {
    let mut words = line.split_whitespace();
    let micros = words.next().context("no time")?.parse()?;
    let kind = words.next().context("no kind")?;
    let mut field = |name: &str| -> Result<String> {
        let word = words.next().with_context(|| format!("no {name}"))?;
        word.strip_prefix(name)
            .and_then(|w| w.strip_prefix('='))
            .map(str::to_string)
            .with_context(|| format!("expected {name}=…, found {word:?}"))
    };
    let generation = field("gen")?.parse()?;
    let seq = field("seq")?.parse()?;
    let kind = match kind {
        "ack" => Kind::Ack,
        "release" => {
            field("n")?;
            let via_ack = match field("via")?.as_str() {
                "ack" => true,
                "lease" => false,
                other => bail!("unknown via {other:?}"),
            };
            Kind::Release { via_ack }
        }
        other => bail!("unknown kind {other:?}"),
    };
    Ok(Line {
        micros,
        kind,
        generation,
        seq,
    })
}

/// Every broken promise found in `records`, described.
pub fn violations(records: &[Record]) -> Vec<String> {
    let mut found = Vec::new();
    for (i, a) in records.iter().enumerate() {
        for b in &records[i + 1..] {
            let shared = a
                .releases()
                .find(|x| b.releases().any(|y| y.generation == x.generation));
            if let Some(line) = shared {
                found.push(format!(
                    "{} and {} both released output in generation {}",
                    a.node, b.node, line.generation
                ));
            }
        }
    }
    for record in records {
        let overtaken = record.releases().find_map(|line| {
            records
                .iter()
                .filter(|other| other.node != record.node)
                .flat_map(|other| other.releases().map(move |l| (other, l)))
                .find(|(_, newer)| newer.generation > line.generation && newer.micros < line.micros)
                .map(|(other, newer)| (line, other, newer))
        });
        if let Some((line, other, newer)) = overtaken {
            found.push(format!(
                "{} released in generation {} at {} µs, after {} had released in generation {} at {} µs",
                record.node, line.generation, line.micros, other.node, newer.generation, newer.micros
            ));
        }
        let acks: Vec<&Line> = records
            .iter()
            .filter(|other| other.node != record.node)
            .flat_map(|other| other.lines.iter().filter(|l| l.kind == Kind::Ack))
            .collect();
        let early = record.releases().find(|release| {
            release.kind == (Kind::Release { via_ack: true })
                && !acks.iter().any(|ack| {
                    ack.generation == release.generation
                        && ack.seq >= release.seq
                        && ack.micros <= release.micros
                })
        });
        if let Some(release) = early {
            found.push(format!(
                "{} released up to entry {} of generation {} at {} µs, before any ack of it",
                record.node, release.seq, release.generation, release.micros
            ));
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(node: &str, text: &str) -> Record {
        Record::parse(node, text).unwrap()
    }

    #[test]
    fn a_correct_history_has_no_violation() {
        let a = record(
            "a",
            "10 release gen=1 seq=4 n=1 via=ack\n20 release gen=1 seq=9 n=2 via=ack\n",
        );
        let b = record(
            "b",
            "5 ack gen=1 seq=4\n15 ack gen=1 seq=9\n30 release gen=2 seq=12 n=1 via=lease\n",
        );
        assert_eq!(violations(&[a, b]), Vec::<String>::new());
    }

    #[test]
    fn a_release_before_its_ack_is_caught() {
        let a = record("a", "10 release gen=1 seq=9 n=1 via=ack\n");
        let b = record("b", "5 ack gen=1 seq=4\n15 ack gen=1 seq=9\n");
        let found = violations(&[a, b]);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].contains("before any ack"), "{found:?}");
    }

    #[test]
    fn two_nodes_releasing_in_one_generation_are_caught() {
        let a = record("a", "10 release gen=2 seq=9 n=1 via=lease\n");
        let b = record("b", "12 release gen=2 seq=9 n=1 via=lease\n");
        let found = violations(&[a, b]);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].contains("both released"), "{found:?}");
    }

    #[test]
    fn an_old_primary_releasing_after_a_newer_one_is_caught() {
        let a = record(
            "a",
            "5 ack gen=2 seq=1\n10 release gen=1 seq=9 n=1 via=lease\n",
        );
        let b = record("b", "8 release gen=2 seq=1 n=1 via=lease\n");
        let found = violations(&[a, b]);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            found[0].contains("after b had released in generation 2"),
            "{found:?}"
        );
    }

    #[test]
    fn a_cut_last_line_is_ignored_and_garbage_is_an_error() {
        let a = record(
            "a",
            "10 release gen=1 seq=9 n=1 via=ack\n11 release gen=1 se",
        );
        assert_eq!(a.lines.len(), 1);
        assert!(Record::parse("a", "10 release gen=x seq=9 n=1 via=ack\n").is_err());
        assert!(Record::parse("a", "10 launch gen=1 seq=9\n").is_err());
    }
}
