//! `wordcount`: a `wc`-like Lull guest, built as a WASI preview 2 component.
//!
//! Walks `/input` recursively (in sorted order, so the output is
//! deterministic), counts the lines, words and bytes of every file, writes the
//! table to `/output/counts.tsv` and prints the same table to stdout. The
//! table is tab-separated: a header `lines words bytes file`, one row per file
//! (path relative to `/input`, `/`-separated) and a last row for the `total`.
//!
//! Counting follows `wc` in the C locale: a line is a `\n` byte, a word is a
//! maximal run of non-whitespace bytes (space, `\t`, `\n`, `\v`, `\f`, `\r`
//! separate words) and bytes are bytes. Files are streamed, so they may be
//! larger than the guest's memory.

use std::fmt::Write as _;
use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

const INPUT_DIR: &str = "/input";
const OUTPUT_FILE: &str = "/output/counts.tsv";

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            eprintln!("wordcount: error: {msg}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), String> {
    let mut args = std::env::args().skip(1);
    if let Some(arg) = args.next() {
        return match arg.as_str() {
            "-h" | "--help" => {
                println!(
                    "usage: wordcount\n\nCounts lines, words and bytes of every file under {INPUT_DIR}\nand writes the table to {OUTPUT_FILE} (and to stdout)."
                );
                Ok(())
            }
            other => Err(format!(
                "unexpected argument '{other}' (wordcount takes no arguments; try --help)"
            )),
        };
    }

    let root = Path::new(INPUT_DIR);
    match fs::metadata(root) {
        Ok(meta) if meta.is_dir() => {}
        Ok(_) => return Err(format!("{INPUT_DIR} is not a directory")),
        Err(e) => {
            return Err(format!(
                "cannot open {INPUT_DIR}: {e} (was the job submitted with `inputs = [...]`?)"
            ));
        }
    }

    let rows = count_tree(root)?;
    let table = render_table(&rows);
    fs::write(OUTPUT_FILE, &table).map_err(|e| format!("cannot write {OUTPUT_FILE}: {e}"))?;
    print!("{table}");
    Ok(())
}

/// Line, word and byte counts of one file (or of a sum of files).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub lines: u64,
    pub words: u64,
    pub bytes: u64,
}

impl std::ops::AddAssign for Counts {
    fn add_assign(&mut self, rhs: Self) {
        self.lines += rhs.lines;
        self.words += rhs.words;
        self.bytes += rhs.bytes;
    }
}

/// Streaming counter: feed it chunks of any size, the result is the same as
/// counting the concatenation in one go (a word split across two chunks is
/// counted once).
#[derive(Debug, Default)]
pub struct Counter {
    counts: Counts,
    in_word: bool,
}

impl Counter {
    pub fn feed(&mut self, chunk: &[u8]) {
        let mut in_word = self.in_word;
        let mut lines = 0u64;
        let mut words = 0u64;
        for &b in chunk {
            if b == b'\n' {
                lines += 1;
            }
            if is_space(b) {
                in_word = false;
            } else if !in_word {
                in_word = true;
                words += 1;
            }
        }
        self.in_word = in_word;
        self.counts.lines += lines;
        self.counts.words += words;
        self.counts.bytes += chunk.len() as u64;
    }

    pub fn finish(self) -> Counts {
        self.counts
    }
}

/// Whitespace as `isspace` in the C locale.
fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r')
}

/// Counts everything readable from `reader`.
pub fn count_reader(mut reader: impl Read) -> io::Result<Counts> {
    let mut counter = Counter::default();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match reader.read(&mut buf) {
            Ok(0) => return Ok(counter.finish()),
            Ok(n) => counter.feed(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// One row of the table: a file's path relative to the root, `/`-separated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub path: String,
    pub counts: Counts,
}

/// Counts every regular file under `root`, depth first, entries of each
/// directory sorted by name.
pub fn count_tree(root: &Path) -> Result<Vec<Row>, String> {
    let mut files = Vec::new();
    collect_files(root, &mut Vec::new(), &mut files)?;
    let mut rows = Vec::with_capacity(files.len());
    for (full, rel) in files {
        let file =
            fs::File::open(&full).map_err(|e| format!("cannot open {}: {e}", full.display()))?;
        let counts =
            count_reader(file).map_err(|e| format!("cannot read {}: {e}", full.display()))?;
        rows.push(Row { path: rel, counts });
    }
    Ok(rows)
}

fn collect_files(
    dir: &Path,
    rel: &mut Vec<String>,
    out: &mut Vec<(PathBuf, String)>,
) -> Result<(), String> {
    let entries = fs::read_dir(dir).map_err(|e| format!("cannot list {}: {e}", dir.display()))?;
    let mut entries = entries
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("cannot list {}: {e}", dir.display()))?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let path = entry.path();
        // Follow symlinks; skip anything that is neither a file nor a directory.
        let meta =
            fs::metadata(&path).map_err(|e| format!("cannot stat {}: {e}", path.display()))?;
        rel.push(entry.file_name().to_string_lossy().into_owned());
        if meta.is_dir() {
            collect_files(&path, rel, out)?;
        } else if meta.is_file() {
            out.push((path, rel.join("/")));
        }
        rel.pop();
    }
    Ok(())
}

/// Renders the rows and a `total` row as TSV with a header line.
pub fn render_table(rows: &[Row]) -> String {
    let mut out = String::from("lines\twords\tbytes\tfile\n");
    let mut total = Counts::default();
    for row in rows {
        let c = row.counts;
        let _ = writeln!(
            out,
            "{}\t{}\t{}\t{}",
            c.lines,
            c.words,
            c.bytes,
            escape_field(&row.path)
        );
        total += c;
    }
    let _ = writeln!(
        out,
        "{}\t{}\t{}\ttotal",
        total.lines, total.words, total.bytes
    );
    out
}

/// Keeps a file name on one TSV field: backslash-escapes `\`, tab, newline
/// and carriage return.
fn escape_field(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for ch in s.chars() {
        match ch {
            '\\' => out.push_str("\\\\"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count(s: &str) -> Counts {
        count_reader(s.as_bytes()).unwrap()
    }

    #[test]
    fn counts_like_wc() {
        assert_eq!(
            count(""),
            Counts {
                lines: 0,
                words: 0,
                bytes: 0
            }
        );
        assert_eq!(
            count("hello world\n"),
            Counts {
                lines: 1,
                words: 2,
                bytes: 12
            }
        );
        // No trailing newline: wc counts newline characters, not lines.
        assert_eq!(
            count("one\ntwo three"),
            Counts {
                lines: 1,
                words: 3,
                bytes: 13
            }
        );
        assert_eq!(
            count("  \t lead  and\r\ntrail \x0b\x0c\n\n"),
            Counts {
                lines: 3,
                words: 3,
                bytes: 25
            }
        );
        // Multi-byte UTF-8 counts bytes, and is one word.
        assert_eq!(
            count("naïve café\n"),
            Counts {
                lines: 1,
                words: 2,
                bytes: 13
            }
        );
    }

    #[test]
    fn words_split_across_chunks_count_once() {
        let text = b"alpha beta\ngamma  delta epsilon\n";
        let whole = count_reader(&text[..]).unwrap();
        for split in 0..=text.len() {
            let mut c = Counter::default();
            c.feed(&text[..split]);
            c.feed(&text[split..]);
            assert_eq!(c.finish(), whole, "split at {split}");
        }
    }

    #[test]
    fn table_has_header_rows_and_total() {
        let rows = vec![
            Row {
                path: "a.txt".into(),
                counts: Counts {
                    lines: 1,
                    words: 2,
                    bytes: 12,
                },
            },
            Row {
                path: "sub/b\tc.txt".into(),
                counts: Counts {
                    lines: 3,
                    words: 4,
                    bytes: 20,
                },
            },
        ];
        assert_eq!(
            render_table(&rows),
            "lines\twords\tbytes\tfile\n1\t2\t12\ta.txt\n3\t4\t20\tsub/b\\tc.txt\n4\t6\t32\ttotal\n"
        );
    }

    #[test]
    fn walks_tree_sorted_and_recursive() {
        let root = std::env::temp_dir().join(format!("lull-wordcount-test-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        fs::create_dir_all(root.join("b/inner")).unwrap();
        fs::create_dir_all(root.join("empty")).unwrap();
        fs::write(root.join("c.txt"), "three words here\n").unwrap();
        fs::write(root.join("a.txt"), "x\ny\n").unwrap();
        fs::write(root.join("b/inner/z.txt"), "").unwrap();
        fs::write(root.join("b/m.txt"), "m").unwrap();

        let rows = count_tree(&root).unwrap();
        fs::remove_dir_all(&root).unwrap();

        let paths: Vec<&str> = rows.iter().map(|r| r.path.as_str()).collect();
        assert_eq!(paths, ["a.txt", "b/inner/z.txt", "b/m.txt", "c.txt"]);
        assert_eq!(
            rows[0].counts,
            Counts {
                lines: 2,
                words: 2,
                bytes: 4
            }
        );
        assert_eq!(
            rows[3].counts,
            Counts {
                lines: 1,
                words: 3,
                bytes: 17
            }
        );
    }

    #[test]
    fn missing_root_is_an_error_not_a_panic() {
        let err = count_tree(Path::new("/definitely/not/here")).unwrap_err();
        assert!(err.contains("cannot list"), "{err}");
    }
}
