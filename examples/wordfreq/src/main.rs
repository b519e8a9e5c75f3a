//! `wordfreq`: both steps of a map-reduce over text, as one Lull guest (a WASI preview 2
//! component), run by the workflow in `workflow.toml`.
//!
//! - `wordfreq map`: counts the words of every file under `/input` and writes
//!   `/output/counts.tsv`. A word is a run of letters, digits and apostrophes inside a word,
//!   lower-cased; files must be UTF-8 text.
//! - `wordfreq reduce [--top N] [DIR]`: adds up every `counts.tsv` under `DIR` (default
//!   `/map`, where the workflow mounts the map's outputs, each task's under its index), writes
//!   every word's total to `/output/totals.tsv` and prints the `N` most frequent (default 10).
//!
//! Tables are tab-separated `word count` rows, most frequent first, ties by word, so that the
//! output is the same however the work was split.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

const USAGE: &str = "usage: wordfreq map            count the words of the files under /input\n       wordfreq reduce [--top N] [DIR]\n                               add up the counts.tsv under DIR (default /map)";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            eprintln!("wordfreq: error: {msg}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &[String]) -> Result<(), String> {
    match args.first().map(String::as_str) {
        Some("map") if args.len() == 1 => map(Path::new("/input"), Path::new("/output")),
        Some("reduce") => {
            let (top, dir) = reduce_args(&args[1..])?;
            reduce(&dir, Path::new("/output"), top)
        }
        Some("-h" | "--help") => {
            println!("{USAGE}");
            Ok(())
        }
        _ => Err(format!("unexpected arguments {args:?}\n{USAGE}")),
    }
}

/// `[--top N] [DIR]`.
fn reduce_args(args: &[String]) -> Result<(usize, PathBuf), String> {
    let mut top = 10;
    let mut dir = PathBuf::from("/map");
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        if arg == "--top" {
            let n = rest.next().ok_or("--top needs a number")?;
            top = n
                .parse()
                .map_err(|_| format!("--top {n:?}: not a number of words"))?;
        } else {
            dir = PathBuf::from(arg);
        }
    }
    Ok((top, dir))
}

/// The map step: every file under `input` to `output/counts.tsv`.
fn map(input: &Path, output: &Path) -> Result<(), String> {
    let files = files_under(input)?;
    if files.is_empty() {
        return Err(format!("no files under {}", input.display()));
    }
    let mut counts = BTreeMap::new();
    for file in &files {
        let bytes = fs::read(file).map_err(|e| format!("cannot read {}: {e}", file.display()))?;
        let text = String::from_utf8(bytes).map_err(|e| {
            format!(
                "{} is not UTF-8 text (at byte {})",
                file.display(),
                e.utf8_error().valid_up_to()
            )
        })?;
        count_words(&text, &mut counts);
    }
    let out = output.join("counts.tsv");
    fs::write(&out, table(&counts)).map_err(|e| format!("cannot write {}: {e}", out.display()))?;
    println!(
        "{} words, {} distinct, in {} file(s)",
        counts.values().sum::<u64>(),
        counts.len(),
        files.len()
    );
    Ok(())
}

/// The reduce step: every `counts.tsv` under `dir` added up to `output/totals.tsv`; the `top`
/// most frequent printed.
fn reduce(dir: &Path, output: &Path, top: usize) -> Result<(), String> {
    let parts: Vec<PathBuf> = files_under(dir)?
        .into_iter()
        .filter(|p| p.file_name().is_some_and(|n| n == "counts.tsv"))
        .collect();
    if parts.is_empty() {
        return Err(format!(
            "no counts.tsv under {} (is the map's output mounted there?)",
            dir.display()
        ));
    }
    let mut totals = BTreeMap::new();
    for part in &parts {
        let text =
            fs::read_to_string(part).map_err(|e| format!("cannot read {}: {e}", part.display()))?;
        add_counts(&text, &mut totals).map_err(|e| format!("{}: {e}", part.display()))?;
    }
    let out = output.join("totals.tsv");
    fs::write(&out, table(&totals)).map_err(|e| format!("cannot write {}: {e}", out.display()))?;
    let ranked = ranked(&totals);
    println!(
        "the {} most frequent of {} distinct words ({} in all), from {} map task(s):",
        top.min(ranked.len()),
        ranked.len(),
        totals.values().sum::<u64>(),
        parts.len()
    );
    for (word, n) in ranked.iter().take(top) {
        println!("{n:>6}  {word}");
    }
    Ok(())
}

/// The regular files under `dir`, at any depth, sorted.
fn files_under(dir: &Path) -> Result<Vec<PathBuf>, String> {
    let mut out = Vec::new();
    let mut entries: Vec<PathBuf> = fs::read_dir(dir)
        .map_err(|e| format!("cannot list {}: {e}", dir.display()))?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()
        .map_err(|e| format!("cannot list {}: {e}", dir.display()))?;
    entries.sort();
    for path in entries {
        if path.is_dir() {
            out.extend(files_under(&path)?);
        } else if path.is_file() {
            out.push(path);
        }
    }
    Ok(out)
}

/// Adds the words of `text` to `counts`.
fn count_words(text: &str, counts: &mut BTreeMap<String, u64>) {
    for word in text.split(|c: char| !(c.is_alphanumeric() || c == '\'')) {
        let word = word.trim_matches('\'');
        if !word.is_empty() {
            *counts.entry(word.to_lowercase()).or_default() += 1;
        }
    }
}

/// Adds a table of `word<TAB>count` rows to `totals`.
fn add_counts(text: &str, totals: &mut BTreeMap<String, u64>) -> Result<(), String> {
    for (i, line) in text.lines().enumerate() {
        let (word, n) = line
            .split_once('\t')
            .ok_or_else(|| format!("line {}: not `word<TAB>count`", i + 1))?;
        let n: u64 = n
            .parse()
            .map_err(|_| format!("line {}: {n:?} is not a count", i + 1))?;
        *totals.entry(word.to_owned()).or_default() += n;
    }
    Ok(())
}

/// The words, most frequent first, ties by word.
fn ranked(counts: &BTreeMap<String, u64>) -> Vec<(&str, u64)> {
    let mut rows: Vec<(&str, u64)> = counts.iter().map(|(w, n)| (w.as_str(), *n)).collect();
    rows.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    rows
}

/// The counts as a table, in [`ranked`] order.
fn table(counts: &BTreeMap<String, u64>) -> String {
    let mut out = String::new();
    for (word, n) in ranked(counts) {
        let _ = writeln!(out, "{word}\t{n}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_are_runs_of_letters_lower_cased() {
        let mut counts = BTreeMap::new();
        count_words("The lamp's light -- the LAMP, 2 times; 'quoted'", &mut counts);
        assert_eq!(counts["the"], 2);
        assert_eq!(counts["lamp"], 1);
        assert_eq!(counts["lamp's"], 1);
        assert_eq!(counts["2"], 1);
        assert_eq!(counts["quoted"], 1);
        assert!(!counts.contains_key(""));
    }

    #[test]
    fn split_counts_add_up_to_the_whole() {
        let text = "a b a c\nb a d";
        let mut whole = BTreeMap::new();
        count_words(text, &mut whole);
        let mut totals = BTreeMap::new();
        for part in ["a b a c", "b a d"] {
            let mut counts = BTreeMap::new();
            count_words(part, &mut counts);
            add_counts(&table(&counts), &mut totals).unwrap();
        }
        assert_eq!(totals, whole);
        assert_eq!(table(&totals), "a\t3\nb\t2\nc\t1\nd\t1\n");
    }

    #[test]
    fn a_bad_table_names_its_line() {
        let mut totals = BTreeMap::new();
        assert_eq!(
            add_counts("a\t1\nb 2\n", &mut totals).unwrap_err(),
            "line 2: not `word<TAB>count`"
        );
        assert!(add_counts("a\tmany\n", &mut totals).unwrap_err().contains("not a count"));
    }

    #[test]
    fn reduce_takes_a_top_and_a_directory() {
        let args = |a: &[&str]| reduce_args(&a.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(args(&[]).unwrap(), (10, PathBuf::from("/map")));
        assert_eq!(args(&["--top", "3", "/x"]).unwrap(), (3, PathBuf::from("/x")));
        assert!(args(&["--top", "lots"]).is_err());
    }

    #[test]
    fn map_then_reduce_over_real_files() {
        let dir = std::env::temp_dir().join(format!("wordfreq-test-{}", std::process::id()));
        let input = dir.join("input");
        let map_out = dir.join("map/0");
        let out = dir.join("output");
        for d in [&input, &map_out, &out] {
            fs::create_dir_all(d).unwrap();
        }
        fs::write(input.join("a.txt"), "One fish two fish").unwrap();
        map(&input, &map_out).unwrap();
        fs::write(input.join("bad.txt"), [0xff, 0xfe]).unwrap();
        assert!(map(&input, &map_out).unwrap_err().contains("is not UTF-8 text"));
        reduce(&dir.join("map"), &out, 2).unwrap();
        assert_eq!(
            fs::read_to_string(out.join("totals.tsv")).unwrap(),
            "fish\t2\none\t1\ntwo\t1\n"
        );
        fs::remove_dir_all(&dir).unwrap();
    }
}
