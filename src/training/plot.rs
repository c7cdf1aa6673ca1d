//! `loss.png`: training and validation loss versus step, drawn without a font or plotting
//! stack (a 5x7 pixel font covers the digits and the few words on the chart).

use std::collections::BTreeMap;
use std::path::Path;

use crate::error::{FinetuneError, Result};
use crate::training::checkpoints::write_atomic;
use crate::training::metrics::{MetricsRecord, read_metrics};

const W: usize = 800;
const H: usize = 480;
const LEFT: usize = 78;
const RIGHT: usize = 24;
const TOP: usize = 36;
const BOTTOM: usize = 44;
const TRAIN: [u8; 3] = [31, 119, 180];
const EVAL: [u8; 3] = [255, 127, 14];
const INK: [u8; 3] = [40, 40, 40];
const GRID: [u8; 3] = [225, 225, 225];

fn glyph(c: char) -> [u8; 7] {
    match c {
        '0' => [14, 17, 19, 21, 25, 17, 14],
        '1' => [4, 12, 4, 4, 4, 4, 14],
        '2' => [14, 17, 1, 2, 4, 8, 31],
        '3' => [30, 1, 1, 14, 1, 1, 30],
        '4' => [2, 6, 10, 18, 31, 2, 2],
        '5' => [31, 16, 30, 1, 1, 17, 14],
        '6' => [6, 8, 16, 30, 17, 17, 14],
        '7' => [31, 1, 2, 4, 8, 8, 8],
        '8' => [14, 17, 17, 14, 17, 17, 14],
        '9' => [14, 17, 17, 15, 1, 2, 12],
        '.' => [0, 0, 0, 0, 0, 12, 12],
        '-' => [0, 0, 0, 31, 0, 0, 0],
        'e' => [0, 0, 14, 17, 31, 16, 14],
        'a' => [0, 0, 14, 1, 15, 17, 15],
        'i' => [4, 0, 12, 4, 4, 4, 14],
        'n' => [0, 0, 22, 25, 17, 17, 17],
        'r' => [0, 0, 22, 25, 16, 16, 16],
        't' => [8, 8, 28, 8, 8, 9, 6],
        'v' => [0, 0, 17, 17, 17, 10, 4],
        'l' => [12, 4, 4, 4, 4, 4, 14],
        'o' => [0, 0, 14, 17, 17, 17, 14],
        's' => [0, 0, 15, 16, 14, 1, 30],
        'p' => [0, 0, 30, 17, 30, 16, 16],
        'm' => [0, 0, 26, 21, 21, 17, 17],
        'g' => [0, 0, 15, 17, 15, 1, 14],
        'c' => [0, 0, 14, 16, 16, 17, 14],
        'u' => [0, 0, 17, 17, 17, 19, 13],
        'y' => [0, 0, 17, 17, 15, 1, 14],
        'w' => [0, 0, 17, 17, 21, 21, 10],
        'd' => [1, 1, 13, 19, 17, 17, 15],
        'h' => [16, 16, 22, 25, 17, 17, 17],
        _ => [0; 7],
    }
}

struct Canvas {
    px: Vec<u8>,
}

impl Canvas {
    fn new() -> Self {
        Canvas {
            px: vec![255; W * H * 3],
        }
    }

    fn set(&mut self, x: i64, y: i64, c: [u8; 3]) {
        if x >= 0 && y >= 0 && (x as usize) < W && (y as usize) < H {
            let i = (y as usize * W + x as usize) * 3;
            self.px[i..i + 3].copy_from_slice(&c);
        }
    }

    fn line(&mut self, (x0, y0): (i64, i64), (x1, y1): (i64, i64), c: [u8; 3], thick: bool) {
        let (dx, dy) = ((x1 - x0).abs(), -(y1 - y0).abs());
        let (sx, sy) = (if x0 < x1 { 1 } else { -1 }, if y0 < y1 { 1 } else { -1 });
        let (mut x, mut y, mut err) = (x0, y0, dx + dy);
        loop {
            self.set(x, y, c);
            if thick {
                self.set(x + 1, y, c);
                self.set(x, y + 1, c);
            }
            if x == x1 && y == y1 {
                break;
            }
            let e2 = 2 * err;
            if e2 >= dy {
                err += dy;
                x += sx;
            }
            if e2 <= dx {
                err += dx;
                y += sy;
            }
        }
    }

    /// Text with its top-left corner at (x, y), 2x scaled.
    fn text(&mut self, x: i64, y: i64, s: &str, c: [u8; 3]) {
        for (k, ch) in s.chars().enumerate() {
            let g = glyph(ch);
            for (row, bits) in g.iter().enumerate() {
                for col in 0..5 {
                    if bits & (16 >> col) != 0 {
                        for (ox, oy) in [(0, 0), (1, 0), (0, 1), (1, 1)] {
                            self.set(x + k as i64 * 12 + col * 2 + ox, y + row as i64 * 2 + oy, c);
                        }
                    }
                }
            }
        }
    }
}

fn text_width(s: &str) -> i64 {
    s.chars().count() as i64 * 12
}

/// The training and validation loss by step from `metrics.jsonl` (a step logged twice, e.g.
/// around a resume, keeps its last value).
fn read_series(metrics: &Path) -> Result<(BTreeMap<u64, f64>, BTreeMap<u64, f64>)> {
    let (mut train, mut eval) = (BTreeMap::new(), BTreeMap::new());
    for record in read_metrics(metrics)? {
        match record {
            MetricsRecord::Step(s) => train.insert(s.step, s.loss),
            MetricsRecord::Eval(e) => eval.insert(e.step, e.eval_loss),
        };
    }
    Ok((train, eval))
}

fn label(v: f64) -> String {
    if v.abs() >= 100.0 || (v != 0.0 && v.abs() < 0.01) {
        format!("{v:.1e}")
    } else {
        format!("{v:.3}")
    }
}

/// Draws `png` from `metrics`; without any loss values nothing is written.
pub fn write_loss_plot(metrics: &Path, png_path: &Path) -> Result<()> {
    if !metrics.exists() {
        return Ok(());
    }
    let (train, eval) = read_series(metrics)?;
    draw(
        &[("train", TRAIN, &train), ("eval", EVAL, &eval)],
        "loss",
        png_path,
    )
}

/// Draws the reward margins (training steps and held-out evaluations) and the held-out
/// reward accuracy of a preference run's `metrics` into `png_path`; a supervised run's log has
/// none, and nothing is written.
pub fn write_rewards_plot(metrics: &Path, png_path: &Path) -> Result<()> {
    if !metrics.exists() {
        return Ok(());
    }
    let (mut margin, mut eval_margin, mut eval_accuracy) =
        (BTreeMap::new(), BTreeMap::new(), BTreeMap::new());
    for record in read_metrics(metrics)? {
        match record {
            MetricsRecord::Step(s) => {
                if let Some(p) = s.preference {
                    margin.insert(s.step, p.rewards_margins);
                }
            }
            MetricsRecord::Eval(e) => {
                if let Some(p) = e.preference {
                    eval_margin.insert(e.step, p.rewards_margins);
                    eval_accuracy.insert(e.step, p.rewards_accuracies);
                }
            }
        }
    }
    if margin.is_empty() && eval_margin.is_empty() {
        return Ok(());
    }
    draw(
        &[
            ("train margin", TRAIN, &margin),
            ("eval margin", EVAL, &eval_margin),
            ("eval accuracy", PALETTE[2], &eval_accuracy),
        ],
        "rewards",
        png_path,
    )
}

/// Colours of the curves of [`write_curves_plot`], in turn.
const PALETTE: [[u8; 3]; 8] = [
    [31, 119, 180],
    [255, 127, 14],
    [44, 160, 44],
    [214, 39, 40],
    [148, 103, 189],
    [140, 86, 75],
    [227, 119, 194],
    [23, 190, 207],
];

/// The validation loss of each `metrics.jsonl` in `runs`, one curve per run, labelled 1, 2, …
/// in the legend (the caller's table says which run is which).
pub(crate) fn write_curves_plot(runs: &[&Path], png_path: &Path) -> Result<()> {
    let mut series = Vec::new();
    for m in runs {
        series.push(if m.exists() {
            read_series(m)?.1
        } else {
            BTreeMap::new()
        });
    }
    let labels: Vec<String> = (1..=series.len()).map(|i| i.to_string()).collect();
    let curves: Vec<(&str, [u8; 3], &BTreeMap<u64, f64>)> = series
        .iter()
        .enumerate()
        .map(|(i, s)| (labels[i].as_str(), PALETTE[i % PALETTE.len()], s))
        .collect();
    draw(&curves, "eval loss", png_path)
}

fn draw(
    series: &[(&str, [u8; 3], &BTreeMap<u64, f64>)],
    y_label: &str,
    png_path: &Path,
) -> Result<()> {
    let all: Vec<f64> = series
        .iter()
        .flat_map(|(_, _, s)| s.values())
        .copied()
        .filter(|v| v.is_finite())
        .collect();
    if all.is_empty() {
        return Ok(());
    }
    let (lo, hi) = all
        .iter()
        .fold((f64::MAX, f64::MIN), |(a, b), &v| (a.min(v), b.max(v)));
    let pad = ((hi - lo) * 0.06).max(1e-3);
    let (lo, hi) = (lo - pad, hi + pad);
    let last_step = series
        .iter()
        .flat_map(|(_, _, s)| s.keys())
        .copied()
        .max()
        .unwrap_or(1)
        .max(1);
    let (pw, ph) = ((W - LEFT - RIGHT) as f64, (H - TOP - BOTTOM) as f64);
    let to_px = |step: u64, v: f64| {
        let x = LEFT as f64 + pw * step as f64 / last_step as f64;
        let y = TOP as f64 + ph * (1.0 - (v - lo) / (hi - lo));
        (x.round() as i64, y.round() as i64)
    };
    let mut c = Canvas::new();
    for k in 0..=4 {
        let v = lo + (hi - lo) * k as f64 / 4.0;
        let (_, y) = to_px(0, v);
        c.line((LEFT as i64, y), ((W - RIGHT) as i64, y), GRID, false);
        let s = label(v);
        c.text(LEFT as i64 - 8 - text_width(&s), y - 7, &s, INK);
        let step = (last_step as f64 * k as f64 / 4.0).round() as u64;
        let (x, _) = to_px(step, lo);
        c.line((x, TOP as i64), (x, (H - BOTTOM) as i64), GRID, false);
        let s = step.to_string();
        c.text(x - text_width(&s) / 2, (H - BOTTOM) as i64 + 8, &s, INK);
    }
    let (x0, y0, x1, y1) = (
        LEFT as i64,
        TOP as i64,
        (W - RIGHT) as i64,
        (H - BOTTOM) as i64,
    );
    c.line((x0, y1), (x1, y1), INK, false);
    c.line((x0, y0), (x0, y1), INK, false);
    c.text(8, 4, y_label, INK);
    c.text(x1 - text_width("step"), y1 + 26, "step", INK);
    for (_, colour, s) in series {
        let pts: Vec<(i64, i64)> = s
            .iter()
            .filter(|(_, v)| v.is_finite())
            .map(|(&st, &v)| to_px(st, v))
            .collect();
        for w in pts.windows(2) {
            c.line(w[0], w[1], *colour, true);
        }
        for &(x, y) in &pts {
            if s.len() < 60 {
                for d in -2..=2 {
                    c.line((x - 2, y + d), (x + 2, y + d), *colour, false);
                }
            }
        }
    }
    let widest = series
        .iter()
        .map(|(name, _, _)| text_width(name))
        .max()
        .unwrap_or(0)
        .max(64);
    for (k, (name, colour, _)) in series.iter().enumerate() {
        let y = y0 + 10 + 22 * k as i64;
        let x = x1 - widest - 46;
        c.line((x, y + 7), (x + 30, y + 7), *colour, true);
        c.text(x + 38, y, name, INK);
    }
    let mut bytes = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut bytes, W as u32, H as u32);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        let encode = |e: png::EncodingError| FinetuneError::Checkpoint {
            path: png_path.to_path_buf(),
            reason: e.to_string(),
        };
        let mut writer = enc.write_header().map_err(encode)?;
        writer.write_image_data(&c.px).map_err(encode)?;
    }
    write_atomic(png_path, &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plot_draws_both_series() {
        let dir = std::env::temp_dir().join(format!("medify-plot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let metrics = dir.join("metrics.jsonl");
        let mut lines = String::new();
        for s in 1..=20 {
            lines += &format!("{{\"step\":{s},\"loss\":{}}}\n", 3.0 / s as f64);
            if s % 5 == 0 {
                lines += &format!("{{\"step\":{s},\"eval_loss\":{}}}\n", 3.2 / s as f64);
            }
        }
        std::fs::write(&metrics, lines).unwrap();
        let png_path = dir.join("loss.png");
        write_loss_plot(&metrics, &png_path).unwrap();
        let bytes = std::fs::read(&png_path).unwrap();
        assert_eq!(&bytes[1..4], b"PNG");
        let decoder = png::Decoder::new(std::io::Cursor::new(bytes));
        let mut reader = decoder.read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size().unwrap()];
        reader.next_frame(&mut buf).unwrap();
        let count = |c: [u8; 3]| buf.chunks(3).filter(|p| *p == c).count();
        assert!(
            count(TRAIN) > 500 && count(EVAL) > 100,
            "{} {}",
            count(TRAIN),
            count(EVAL)
        );
    }

    #[test]
    fn rewards_plot_draws_margins_and_accuracy_only_for_preference_runs() {
        let dir = std::env::temp_dir().join(format!("medify-rplot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let metrics = dir.join("metrics.jsonl");
        std::fs::write(&metrics, "{\"step\":1,\"loss\":2.0}\n").unwrap();
        let png_path = dir.join("rewards.png");
        write_rewards_plot(&metrics, &png_path).unwrap();
        assert!(!png_path.exists());
        let mut lines = String::new();
        let names = "\"rewards/chosen\":0.1,\"rewards/rejected\":0.0,\"rewards/accuracies\":0.5,\"logps/chosen\":-9.0,\"logps/rejected\":-9.5";
        let eval_names = "\"eval_rewards/chosen\":0.1,\"eval_rewards/rejected\":0.0,\"eval_logps/chosen\":-9.0,\"eval_logps/rejected\":-9.5,\"eval_pairs\":4";
        for s in 1..=20 {
            let m = s as f64 * 0.05;
            lines += &format!("{{\"step\":{s},\"loss\":0.6,{names},\"rewards/margins\":{m}}}\n");
            if s % 5 == 0 {
                lines += &format!(
                    "{{\"step\":{s},\"eval_loss\":0.6,{eval_names},\"eval_rewards/margins\":{},\"eval_rewards/accuracies\":{}}}\n",
                    m * 0.8,
                    0.5 + s as f64 / 50.0
                );
            }
        }
        std::fs::write(&metrics, lines).unwrap();
        write_rewards_plot(&metrics, &png_path).unwrap();
        let bytes = std::fs::read(&png_path).unwrap();
        let decoder = png::Decoder::new(std::io::Cursor::new(bytes));
        let mut reader = decoder.read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size().unwrap()];
        reader.next_frame(&mut buf).unwrap();
        let count = |c: [u8; 3]| buf.chunks(3).filter(|p| *p == c).count();
        assert!(count(TRAIN) > 300 && count(EVAL) > 100 && count(PALETTE[2]) > 100);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
