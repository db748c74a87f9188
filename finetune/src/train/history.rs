//! The loss history of a run: kept in the checkpoint, written as `loss.csv`, drawn as
//! `loss.png`.

use std::path::Path;

use plotters::prelude::*;
use serde::{Deserialize, Serialize};

use crate::fs::write_atomically;
use crate::{Error, Result};

/// One optimizer step (or the evaluation before the first).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub step: usize,
    pub epoch: f64,
    /// Mean training loss of the step's tokens; `None` for the initial evaluation.
    pub train_loss: Option<f64>,
    pub val_loss: Option<f64>,
    pub lr: f64,
    pub grad_norm: Option<f64>,
    /// Input tokens processed so far.
    pub tokens: usize,
    pub elapsed_s: f64,
}

fn cell(v: Option<f64>) -> String {
    v.map(|x| format!("{x:.6}")).unwrap_or_default()
}

/// Writes the history as CSV.
pub fn write_csv(records: &[Record], path: &Path) -> Result<()> {
    let mut out = String::from("step,epoch,train_loss,val_loss,lr,grad_norm,tokens,elapsed_s\n");
    for r in records {
        out.push_str(&format!(
            "{},{:.4},{},{},{:.3e},{},{},{:.2}\n",
            r.step,
            r.epoch,
            cell(r.train_loss),
            cell(r.val_loss),
            r.lr,
            cell(r.grad_norm),
            r.tokens,
            r.elapsed_s
        ));
    }
    write_atomically(path, |tmp| {
        std::fs::write(tmp, out.as_bytes()).map_err(|e| Error::io(tmp, e))
    })
}

/// A font for the chart's labels: plotters draws text only with a registered font, and lore
/// ships none, so the first common system font found is used.
fn register_font() -> bool {
    static FOUND: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *FOUND.get_or_init(|| {
        let candidates = [
            "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
            "/usr/share/fonts/TTF/DejaVuSans.ttf",
            "/usr/share/fonts/dejavu/DejaVuSans.ttf",
            "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
            "/System/Library/Fonts/Supplemental/Arial.ttf",
            "C:\\Windows\\Fonts\\arial.ttf",
        ];
        for path in candidates {
            if let Ok(bytes) = std::fs::read(path) {
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                if plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                    return true;
                }
            }
        }
        false
    })
}

/// Draws training and validation loss against the step as a PNG. Without a system font the
/// chart is drawn without labels (and `false` is returned).
pub fn draw_chart(records: &[Record], path: &Path) -> Result<bool> {
    let labels = register_font();
    let train: Vec<(f64, f64)> = records
        .iter()
        .filter_map(|r| r.train_loss.map(|l| (r.step as f64, l)))
        .collect();
    let valid: Vec<(f64, f64)> = records
        .iter()
        .filter_map(|r| r.val_loss.map(|l| (r.step as f64, l)))
        .collect();
    let all = train.iter().chain(&valid);
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for (_, l) in all.clone() {
        lo = lo.min(*l);
        hi = hi.max(*l);
    }
    if !lo.is_finite() {
        (lo, hi) = (0.0, 1.0);
    }
    let pad = ((hi - lo) * 0.05).max(1e-3);
    let last = records.iter().map(|r| r.step).max().unwrap_or(1).max(1) as f64;
    let draw = || -> std::result::Result<(), Box<dyn std::error::Error>> {
        let tmp = path.with_extension("tmp.png");
        {
            let root = BitMapBackend::new(&tmp, (800, 480)).into_drawing_area();
            root.fill(&WHITE)?;
            let mut builder = ChartBuilder::on(&root);
            builder.margin(16);
            if labels {
                builder
                    .caption("lore finetune: loss", ("sans-serif", 22))
                    .x_label_area_size(36)
                    .y_label_area_size(56);
            }
            let mut chart = builder.build_cartesian_2d(0f64..last, (lo - pad)..(hi + pad))?;
            if labels {
                chart
                    .configure_mesh()
                    .x_desc("step")
                    .y_desc("loss")
                    .light_line_style(WHITE)
                    .draw()?;
            }
            let series = chart.draw_series(LineSeries::new(train.iter().copied(), &BLUE))?;
            if labels {
                series
                    .label("train")
                    .legend(|(x, y)| PathElement::new([(x, y), (x + 16, y)], BLUE));
            }
            chart.draw_series(valid.iter().map(|&p| Circle::new(p, 3, RED.filled())))?;
            let series =
                chart.draw_series(LineSeries::new(valid.iter().copied(), RED.stroke_width(2)))?;
            if labels {
                series
                    .label("validation")
                    .legend(|(x, y)| PathElement::new([(x, y), (x + 16, y)], RED));
                chart
                    .configure_series_labels()
                    .background_style(WHITE.mix(0.8))
                    .border_style(BLACK)
                    .draw()?;
            }
            root.present()?;
        }
        // Staged by hand, not through `lore_durable::write_with`: plotters picks the image
        // format from the file's extension, so the staging name must end in `.png`.
        lore_durable::sync(&tmp)?;
        std::fs::rename(&tmp, path)?;
        lore_durable::sync_parent(path)?;
        Ok(())
    };
    draw()
        .map_err(|e| Error::Request(format!("{}: cannot draw the chart ({e})", path.display())))?;
    Ok(labels)
}
