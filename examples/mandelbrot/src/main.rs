//! `mandelbrot`: renders one horizontal band of a Mandelbrot image per
//! array-job task.
//!
//! `--width W --height H --tiles T --max-iter M`: task `i` (from
//! `LULL_TASK_INDEX`, 0 when unset) renders rows `[i*H/T, (i+1)*H/T)` of the
//! full W×H image and writes them as `/output/tile-{i:03}.png` (8-bit RGB).
//! Stacking the tiles top to bottom in index order gives the whole picture.
//!
//! Colouring uses the continuous ("smooth") escape count mapped onto a cyclic
//! gradient from deep blue through white and gold; points of the set are
//! black.

use std::fs;
use std::io::BufWriter;
use std::ops::Range;
use std::process::ExitCode;

const OUTPUT_DIR: &str = "/output";
/// Largest accepted width or height, to keep a mistyped argument from
/// asking for gigabytes.
const MAX_DIM: u32 = 1 << 15;
const USAGE: &str = "usage: mandelbrot --width W --height H --tiles T --max-iter M

Renders rows [i*H/T, (i+1)*H/T) of a W x H Mandelbrot image, where i is
$LULL_TASK_INDEX (default 0), and writes /output/tile-{i:03}.png.";

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            eprintln!("mandelbrot: error: {msg}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), String> {
    let Some(args) = parse_args(std::env::args().skip(1))? else {
        println!("{USAGE}");
        return Ok(());
    };
    let index = task_index()?;
    if index >= u64::from(args.tiles) {
        return Err(format!(
            "task index {index} is out of range: there are only {} tiles (0..{})",
            args.tiles, args.tiles
        ));
    }
    let index = index as u32;
    let rows = band_rows(args.height, args.tiles, index);
    let view = View::new(args.width, args.height);
    let pixels = render_band(&view, rows.clone(), args.max_iter);

    let path = format!("{OUTPUT_DIR}/tile-{index:03}.png");
    let file = fs::File::create(&path).map_err(|e| format!("cannot create {path}: {e}"))?;
    write_png(BufWriter::new(file), args.width, rows.len() as u32, &pixels)
        .map_err(|e| format!("cannot write {path}: {e}"))?;
    println!("tile {index}: rows {}..{} written", rows.start, rows.end);
    Ok(())
}

#[derive(Debug, PartialEq, Eq)]
struct Args {
    width: u32,
    height: u32,
    tiles: u32,
    max_iter: u32,
}

/// Parses `--width W --height H --tiles T --max-iter M` (also `--flag=V`).
/// `Ok(None)` means help was asked for.
fn parse_args(args: impl IntoIterator<Item = String>) -> Result<Option<Args>, String> {
    let (mut width, mut height, mut tiles, mut max_iter) = (None, None, None, None);
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        if arg == "-h" || arg == "--help" {
            return Ok(None);
        }
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (arg, None),
        };
        let slot = match flag.as_str() {
            "--width" => &mut width,
            "--height" => &mut height,
            "--tiles" => &mut tiles,
            "--max-iter" => &mut max_iter,
            other => return Err(format!("unexpected argument '{other}'\n\n{USAGE}")),
        };
        let value = match inline {
            Some(v) => v,
            None => args.next().ok_or_else(|| format!("{flag} needs a value"))?,
        };
        let n: u32 = value
            .trim()
            .parse()
            .ok()
            .filter(|&n| n >= 1)
            .ok_or_else(|| {
                format!("invalid value '{value}' for {flag}: expected a positive integer")
            })?;
        if slot.replace(n).is_some() {
            return Err(format!("{flag} given more than once"));
        }
    }
    let missing = |flag: &str| format!("missing {flag}\n\n{USAGE}");
    let args = Args {
        width: width.ok_or_else(|| missing("--width"))?,
        height: height.ok_or_else(|| missing("--height"))?,
        tiles: tiles.ok_or_else(|| missing("--tiles"))?,
        max_iter: max_iter.ok_or_else(|| missing("--max-iter"))?,
    };
    if args.width > MAX_DIM || args.height > MAX_DIM {
        return Err(format!(
            "image is {}x{}; width and height must be at most {MAX_DIM}",
            args.width, args.height
        ));
    }
    if args.tiles > args.height {
        return Err(format!(
            "--tiles {} is more than --height {}: every tile needs at least one row",
            args.tiles, args.height
        ));
    }
    Ok(Some(args))
}

/// The array-job task index from `LULL_TASK_INDEX`, 0 when it is not set.
fn task_index() -> Result<u64, String> {
    match std::env::var("LULL_TASK_INDEX") {
        Ok(v) => v
            .trim()
            .parse()
            .map_err(|_| format!("LULL_TASK_INDEX is '{v}', expected a non-negative integer")),
        Err(std::env::VarError::NotPresent) => Ok(0),
        Err(e) => Err(format!("LULL_TASK_INDEX: {e}")),
    }
}

/// Rows `[i*H/T, (i+1)*H/T)` of an image `height` rows tall split into
/// `tiles` bands. The bands are contiguous, disjoint and cover every row.
pub fn band_rows(height: u32, tiles: u32, index: u32) -> Range<u32> {
    let h = u64::from(height);
    let t = u64::from(tiles);
    let i = u64::from(index);
    let start = i * h / t;
    let end = (i + 1) * h / t;
    start as u32..end as u32
}

/// Maps pixels of the full image to points of the complex plane: the region
/// re in [-2.5, 1.0], im in [-1.25, 1.25] is fitted (keeping square pixels)
/// and centred.
pub struct View {
    width: u32,
    height: u32,
    centre_re: f64,
    centre_im: f64,
    scale: f64,
}

impl View {
    pub fn new(width: u32, height: u32) -> Self {
        let scale = (3.5 / f64::from(width)).max(2.5 / f64::from(height));
        Self {
            width,
            height,
            centre_re: -0.75,
            centre_im: 0.0,
            scale,
        }
    }

    /// The point at the centre of pixel (x, y); y grows downwards.
    fn point(&self, x: u32, y: u32) -> (f64, f64) {
        let re = self.centre_re + (f64::from(x) + 0.5 - f64::from(self.width) / 2.0) * self.scale;
        let im = self.centre_im - (f64::from(y) + 0.5 - f64::from(self.height) / 2.0) * self.scale;
        (re, im)
    }
}

/// Bailout radius squared. A large radius makes the smooth count accurate.
const BAILOUT_SQ: f64 = 256.0 * 256.0;

/// The continuous escape count of `c = re + i·im`, or `None` if the orbit
/// stays bounded for `max_iter` iterations (the point is taken to be in the
/// set).
pub fn escape_time(re: f64, im: f64, max_iter: u32) -> Option<f64> {
    // Points in the main cardioid or the period-2 bulb never escape; skip
    // the full iteration for them.
    let q = (re - 0.25) * (re - 0.25) + im * im;
    if q * (q + (re - 0.25)) <= 0.25 * im * im || (re + 1.0) * (re + 1.0) + im * im <= 0.0625 {
        return None;
    }
    let (mut zr, mut zi) = (0.0f64, 0.0f64);
    for n in 0..max_iter {
        let zr2 = zr * zr;
        let zi2 = zi * zi;
        if zr2 + zi2 > BAILOUT_SQ {
            // nu = n + 1 - log2(log|z|), continuous across iteration bands.
            let log_zn = (zr2 + zi2).ln() * 0.5;
            let nu = f64::from(n) + 1.0 - (log_zn / std::f64::consts::LN_2).log2();
            return Some(nu.max(0.0));
        }
        zi = 2.0 * zr * zi + im;
        zr = zr2 - zi2 + re;
    }
    None
}

/// Gradient stops (position, colour); the last stop wraps to the first, so
/// the palette cycles smoothly.
const PALETTE: [(f64, [f64; 3]); 5] = [
    (0.0, [0.0, 7.0, 100.0]),
    (0.16, [32.0, 107.0, 203.0]),
    (0.42, [237.0, 255.0, 255.0]),
    (0.6425, [255.0, 170.0, 0.0]),
    (0.8575, [0.0, 2.0, 0.0]),
];

/// Colour of a point with escape count `nu` (`None`: inside the set).
pub fn colour(nu: Option<f64>) -> [u8; 3] {
    let Some(nu) = nu else { return [0, 0, 0] };
    // sqrt compresses the rapidly growing counts near the boundary so the
    // outer bands stay wide; the phase puts the far field in deep blue, with
    // white and gold closing in on the set.
    let t = (nu.sqrt() * 0.25 + 0.7).fract();
    let next = PALETTE
        .iter()
        .position(|&(pos, _)| pos > t)
        .unwrap_or(PALETTE.len());
    let (p0, c0) = PALETTE[next - 1];
    let (p1, c1) = if next < PALETTE.len() {
        PALETTE[next]
    } else {
        (1.0, PALETTE[0].1)
    };
    let f = (t - p0) / (p1 - p0);
    // Smoothstep the blend for softer transitions between stops.
    let f = f * f * (3.0 - 2.0 * f);
    let mut rgb = [0u8; 3];
    for k in 0..3 {
        rgb[k] = (c0[k] + (c1[k] - c0[k]) * f).round().clamp(0.0, 255.0) as u8;
    }
    rgb
}

/// Renders the given rows of the full image as packed 8-bit RGB.
pub fn render_band(view: &View, rows: Range<u32>, max_iter: u32) -> Vec<u8> {
    let mut pixels = Vec::with_capacity(view.width as usize * rows.len() * 3);
    for y in rows {
        for x in 0..view.width {
            let (re, im) = view.point(x, y);
            pixels.extend_from_slice(&colour(escape_time(re, im, max_iter)));
        }
    }
    pixels
}

/// Writes packed RGB pixels as an 8-bit RGB PNG.
pub fn write_png(
    out: impl std::io::Write,
    width: u32,
    height: u32,
    rgb: &[u8],
) -> Result<(), png::EncodingError> {
    let mut encoder = png::Encoder::new(out, width, height);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header()?;
    writer.write_image_data(rgb)?;
    writer.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Result<Option<Args>, String> {
        parse_args(list.iter().map(|s| s.to_string()))
    }

    #[test]
    fn bands_cover_all_rows_exactly_once() {
        assert_eq!(band_rows(1200, 4, 0), 0..300);
        assert_eq!(band_rows(1200, 4, 3), 900..1200);
        assert_eq!(band_rows(10, 3, 0), 0..3);
        assert_eq!(band_rows(10, 3, 1), 3..6);
        assert_eq!(band_rows(10, 3, 2), 6..10);
        for (h, t) in [
            (1, 1),
            (7, 7),
            (1200, 4),
            (1201, 7),
            (u32::MAX, 3),
            (5000, 64),
        ] {
            let mut next = 0;
            for i in 0..t {
                let r = band_rows(h, t, i);
                assert_eq!(r.start, next, "h={h} t={t} i={i}");
                assert!(!r.is_empty(), "h={h} t={t} i={i}");
                next = r.end;
            }
            assert_eq!(next, h);
        }
    }

    #[test]
    fn escape_times() {
        // Inside: the origin, the cardioid, the period-2 bulb, and a point of
        // the set outside both checks (c = -0.1 + 0.75i is in a period-3 bulb).
        assert_eq!(escape_time(0.0, 0.0, 100), None);
        assert_eq!(escape_time(-1.0, 0.0, 100), None);
        assert_eq!(escape_time(-0.1, 0.75, 1000), None);
        // Far outside escapes at once; just outside takes longer.
        let far = escape_time(2.0, 2.0, 100).unwrap();
        let near = escape_time(0.26, 0.0, 1000).unwrap();
        assert!(far < 3.0, "{far}");
        assert!(near > 20.0, "{near}");
    }

    #[test]
    fn palette_is_continuous_and_black_inside() {
        assert_eq!(colour(None), [0, 0, 0]);
        // The palette is indexed by sqrt(nu): step evenly in sqrt(nu), over
        // several full cycles (including the wrap from last stop to first).
        let mut prev = colour(Some(0.0));
        for step in 1..=20_000 {
            let s = f64::from(step) * 0.001;
            let nu = s * s;
            let c = colour(Some(nu));
            for k in 0..3 {
                let d = (i32::from(c[k]) - i32::from(prev[k])).abs();
                assert!(d <= 3, "jump of {d} at nu={nu}: {prev:?} -> {c:?}");
            }
            prev = c;
        }
    }

    #[test]
    fn parses_args() {
        assert_eq!(
            args(&[
                "--width",
                "1600",
                "--height",
                "1200",
                "--tiles",
                "4",
                "--max-iter=500"
            ]),
            Ok(Some(Args {
                width: 1600,
                height: 1200,
                tiles: 4,
                max_iter: 500
            }))
        );
        assert_eq!(args(&["-h"]), Ok(None));
        assert!(
            args(&[
                "--width",
                "0",
                "--height",
                "1",
                "--tiles",
                "1",
                "--max-iter",
                "1"
            ])
            .unwrap_err()
            .contains("positive integer")
        );
        assert!(
            args(&[
                "--width",
                "10",
                "--height",
                "3",
                "--tiles",
                "4",
                "--max-iter",
                "1"
            ])
            .unwrap_err()
            .contains("at least one row")
        );
        assert!(
            args(&[
                "--width",
                "100000",
                "--height",
                "3",
                "--tiles",
                "1",
                "--max-iter",
                "1"
            ])
            .unwrap_err()
            .contains("at most")
        );
        assert!(
            args(&["--width", "10"])
                .unwrap_err()
                .contains("missing --height")
        );
        assert!(
            args(&["--depth", "3"])
                .unwrap_err()
                .contains("unexpected argument")
        );
    }

    #[test]
    fn tiles_stack_into_the_full_image_and_encode_as_png() {
        let (w, h, t, m) = (64, 48, 3, 100);
        let view = View::new(w, h);
        let full = render_band(&view, 0..h, m);
        let mut stacked = Vec::new();
        for i in 0..t {
            let rows = band_rows(h, t, i);
            let band = render_band(&view, rows.clone(), m);
            let mut png_bytes = Vec::new();
            write_png(&mut png_bytes, w, rows.len() as u32, &band).unwrap();

            let decoder = png::Decoder::new(std::io::Cursor::new(png_bytes));
            let mut reader = decoder.read_info().unwrap();
            let mut buf = vec![0; reader.output_buffer_size().unwrap()];
            let info = reader.next_frame(&mut buf).unwrap();
            assert_eq!((info.width, info.height), (w, rows.len() as u32));
            assert_eq!(info.color_type, png::ColorType::Rgb);
            assert_eq!(info.bit_depth, png::BitDepth::Eight);
            stacked.extend_from_slice(&buf[..info.buffer_size()]);
        }
        assert_eq!(stacked, full);
        // Some of the image is the set (black) and some is not.
        assert!(full.chunks(3).any(|p| p == [0, 0, 0]));
        assert!(full.chunks(3).any(|p| p != [0, 0, 0]));
    }
}
