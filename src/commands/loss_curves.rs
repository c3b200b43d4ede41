//! `fl-lab loss-curves`: the paper's Figure 1 (FL against p_t), Figure 5 (CE, FL and FL* against
//! x_t) and Figure 6 (their derivatives), as CSV and PNG, computed by the loss code that trains.

use crate::loss::focal::{
    ce_elem, ce_elem_grad, fl_star_elem, fl_star_elem_grad, focal_elem, focal_elem_grad,
    FlStarParams, FocalParams,
};
use crate::plot::{write_line_chart, LineChart, Series};
use anyhow::{Context, Result};
use std::path::{Path, PathBuf};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Directory for figure1/5/6 .csv and .png (created if missing).
    #[arg(long, default_value = "results/loss-curves")]
    pub out: PathBuf,
    /// Focal loss gammas of Figure 1 (comma-separated, each >= 0).
    #[arg(long, value_delimiter = ',', default_value = "0,0.5,1,2,5")]
    pub gammas: Vec<f32>,
}

/// A curve family sampled on a common x grid: `columns[j][i]` is curve `j` at `x[i]`.
#[derive(Debug, Clone)]
pub struct Table {
    pub x_name: String,
    pub x: Vec<f64>,
    pub names: Vec<String>,
    pub labels: Vec<String>,
    pub columns: Vec<Vec<f64>>,
}

/// Figure 1: FL(p_t) without alpha for each gamma, p_t = 0.001 .. 0.999.
pub fn figure1(gammas: &[f32]) -> Result<Table> {
    for &g in gammas {
        FocalParams::new(g, None).context("--gammas")?;
    }
    if gammas.is_empty() {
        anyhow::bail!("--gammas needs at least one value");
    }
    let x: Vec<f64> = (1..1000).map(|i| i as f64 / 1000.0).collect();
    let columns = gammas
        .iter()
        .map(|&g| {
            x.iter()
                .map(|&p| focal_elem((p / (1.0 - p)).ln(), true, g as f64, None))
                .collect()
        })
        .collect();
    Ok(Table {
        x_name: "p_t".into(),
        names: gammas.iter().map(|g| format!("fl_gamma_{g}")).collect(),
        labels: gammas.iter().map(|g| format!("γ = {g}")).collect(),
        x,
        columns,
    })
}

/// The appendix curves: CE, FL gamma=2, FL* gamma=2 beta=1, FL* gamma=4 beta=0 at `x_t`
/// (target 1, so `x = x_t`); `derivative` selects d loss / d x_t (Figure 6) over the loss (Figure 5).
fn appendix(x: Vec<f64>, derivative: bool) -> Result<Table> {
    let stars = [
        FlStarParams::new(2.0, 1.0, None)?,
        FlStarParams::new(4.0, 0.0, None)?,
    ];
    let mut names = vec!["ce".to_string(), "fl_gamma_2".to_string()];
    let mut labels = vec!["CE".to_string(), "FL γ = 2".to_string()];
    let mut columns: Vec<Vec<f64>> = vec![
        x.iter()
            .map(|&v| {
                if derivative {
                    ce_elem_grad(v, true, None)
                } else {
                    ce_elem(v, true, None)
                }
            })
            .collect(),
        x.iter()
            .map(|&v| {
                if derivative {
                    focal_elem_grad(v, true, 2.0, None)
                } else {
                    focal_elem(v, true, 2.0, None)
                }
            })
            .collect(),
    ];
    for s in stars {
        let (g, b) = (s.gamma as f64, s.beta as f64);
        names.push(format!("fl_star_gamma_{}_beta_{}", s.gamma, s.beta));
        labels.push(format!("FL* γ = {}, β = {}", s.gamma, s.beta));
        columns.push(
            x.iter()
                .map(|&v| {
                    if derivative {
                        fl_star_elem_grad(v, true, g, b)
                    } else {
                        fl_star_elem(v, true, g, b)
                    }
                })
                .collect(),
        );
    }
    Ok(Table {
        x_name: "x_t".into(),
        x,
        names,
        labels,
        columns,
    })
}

/// Figure 5: losses against x_t in [-5, 5] (step 0.01).
pub fn figure5() -> Result<Table> {
    appendix((-500..=500).map(|i| i as f64 / 100.0).collect(), false)
}

/// Figure 6: derivatives against x_t in [-10, 10] (step 0.02).
pub fn figure6() -> Result<Table> {
    appendix((-500..=500).map(|i| i as f64 / 50.0).collect(), true)
}

fn write_csv(path: &Path, t: &Table) -> Result<()> {
    let mut w = csv::Writer::from_writer(Vec::new());
    let mut header = vec![t.x_name.clone()];
    header.extend(t.names.iter().cloned());
    w.write_record(&header)?;
    for (i, x) in t.x.iter().enumerate() {
        let mut row = vec![format!("{x}")];
        row.extend(t.columns.iter().map(|c| format!("{:e}", c[i])));
        w.write_record(&row)?;
    }
    let bytes = w.into_inner().context("cannot finish CSV")?;
    crate::util::write_atomic(path, &bytes)
}

/// The chart of a table, keeping only points inside the y range (the CSV has them all).
fn chart(
    t: &Table,
    title: &str,
    x_label: &str,
    y_label: &str,
    x: (f64, f64),
    y: (f64, f64),
) -> LineChart {
    LineChart {
        title: title.into(),
        x_label: x_label.into(),
        y_label: y_label.into(),
        x_range: Some(x),
        y_range: Some(y),
        series: t
            .labels
            .iter()
            .zip(&t.columns)
            .map(|(label, col)| Series {
                label: label.clone(),
                points: t
                    .x
                    .iter()
                    .zip(col)
                    .map(|(&a, &b)| (a, b))
                    .filter(|&(_, b)| b >= y.0 && b <= y.1)
                    .collect(),
                ..Default::default()
            })
            .collect(),
    }
}

/// The top-level entry point for `loss-curves`: writes the files and lists them on stdout.
pub fn run(args: Args, _quiet: bool) -> Result<()> {
    let written = write_all(&args.out, &args.gammas)?;
    println!(
        "loss-curves: wrote {} files to {}",
        written.len(),
        args.out.display()
    );
    for p in written {
        println!("  {}", p.display());
    }
    Ok(())
}

/// Writes figure{1,5,6}.{csv,png} under `out`; returns the paths written.
pub fn write_all(out: &Path, gammas: &[f32]) -> Result<Vec<PathBuf>> {
    if out.exists() && !out.is_dir() {
        anyhow::bail!("--out {} exists and is not a directory", out.display());
    }
    std::fs::create_dir_all(out)
        .with_context(|| format!("cannot create --out {}", out.display()))?;
    let f1 = figure1(gammas)?;
    let f5 = figure5()?;
    let f6 = figure6()?;
    let charts = [
        (
            "figure1",
            &f1,
            chart(
                &f1,
                "Figure 1: focal loss FL(p_t) = -(1 - p_t)^γ log(p_t)",
                "probability of ground truth class",
                "loss",
                (0.0, 1.0),
                (0.0, 5.0),
            ),
        ),
        (
            "figure5",
            &f5,
            chart(
                &f5,
                "Figure 5: CE, FL and FL* against x_t",
                "x_t",
                "loss",
                (-5.0, 5.0),
                (0.0, 5.0),
            ),
        ),
        (
            "figure6",
            &f6,
            chart(
                &f6,
                "Figure 6: derivatives of CE, FL and FL* with respect to x_t",
                "x_t",
                "d loss / d x_t",
                (-10.0, 10.0),
                (-1.2, 0.0),
            ),
        ),
    ];
    let mut written = Vec::new();
    for (name, table, c) in &charts {
        let csv = out.join(format!("{name}.csv"));
        write_csv(&csv, table)?;
        let png = out.join(format!("{name}.png"));
        write_line_chart(&png, c)?;
        written.push(csv);
        written.push(png);
    }
    Ok(written)
}

#[cfg(test)]
#[allow(clippy::approx_constant)] // fixtures are docs/paper.md's printed values (0.6931 is ln 2)
mod tests {
    use super::*;

    fn read(path: &Path) -> (Vec<String>, Vec<Vec<f64>>) {
        let mut r = csv::Reader::from_path(path).unwrap();
        let header = r.headers().unwrap().iter().map(String::from).collect();
        let rows = r
            .records()
            .map(|rec| rec.unwrap().iter().map(|v| v.parse().unwrap()).collect())
            .collect();
        (header, rows)
    }

    fn row_at(rows: &[Vec<f64>], x: f64) -> &Vec<f64> {
        rows.iter().find(|r| (r[0] - x).abs() < 1e-9).unwrap()
    }

    #[test]
    fn writes_all_figures_with_expected_values() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("curves");
        let written = write_all(&out, &[0.0, 0.5, 1.0, 2.0, 5.0]).unwrap();
        assert_eq!(written.len(), 6);
        for p in &written {
            assert!(p.exists(), "{}", p.display());
        }
        let img = image::open(out.join("figure1.png")).unwrap();
        assert_eq!((img.width(), img.height()), crate::plot::SIZE);

        let (h, rows) = read(&out.join("figure1.csv"));
        assert_eq!(
            h,
            [
                "p_t",
                "fl_gamma_0",
                "fl_gamma_0.5",
                "fl_gamma_1",
                "fl_gamma_2",
                "fl_gamma_5"
            ]
        );
        assert_eq!(rows.len(), 999);
        // docs/paper.md §3 at p_t = 0.5 and 0.25.
        let r = row_at(&rows, 0.5);
        for (got, want) in r[1..]
            .iter()
            .zip([0.69315, 0.49013, 0.34657, 0.17329, 0.02166])
        {
            assert!((got - want).abs() < 1e-4, "{got} vs {want}");
        }
        let r = row_at(&rows, 0.25);
        assert!((r[4] - 0.77979).abs() < 1e-4);

        let (h, rows) = read(&out.join("figure5.csv"));
        assert_eq!(
            h,
            [
                "x_t",
                "ce",
                "fl_gamma_2",
                "fl_star_gamma_2_beta_1",
                "fl_star_gamma_4_beta_0"
            ]
        );
        assert_eq!(rows.len(), 1001);
        // docs/paper.md §7 at x_t = -2 and 0.
        let r = row_at(&rows, -2.0);
        for (got, want) in [(r[1], 2.1269), (r[3], 1.5243), (r[4], 2.0001)] {
            assert!((got - want).abs() < 1e-4, "{got} vs {want}");
        }
        let r = row_at(&rows, 0.0);
        assert!((r[1] - 0.6931).abs() < 1e-4 && (r[3] - 0.1566).abs() < 1e-4);

        let (_, rows) = read(&out.join("figure6.csv"));
        assert_eq!(rows.len(), 1001);
        assert_eq!((rows[0][0], rows[1000][0]), (-10.0, 10.0));
        // eq. 9-11 at x_t = 0: CE -0.5, FL(2) 0.25 (2 0.5 log 0.5 - 0.5), FL* -(1 - sigmoid(beta)).
        let r = row_at(&rows, 0.0);
        assert!((r[1] + 0.5).abs() < 1e-12);
        assert!((r[2] - 0.25 * (0.5_f64.ln() - 0.5)).abs() < 1e-12);
        assert!((r[3] + 1.0 / (1.0 + 1f64.exp())).abs() < 1e-12);
        assert!((r[4] + 0.5).abs() < 1e-12);
        // All derivatives lie in the figure's y range [-1.2, 0]; FL's dips just below -1.
        assert!(rows
            .iter()
            .all(|r| r[1..].iter().all(|&d| (-1.2..=0.0).contains(&d))));
        assert!(rows.iter().any(|r| r[2] < -1.0));
    }

    #[test]
    fn rejects_bad_flags() {
        let dir = tempfile::tempdir().unwrap();
        for g in [vec![-1.0f32], vec![f32::NAN], vec![]] {
            assert!(write_all(dir.path(), &g).is_err());
        }
        let file = dir.path().join("f");
        std::fs::write(&file, b"x").unwrap();
        let e = write_all(&file, &[2.0]).unwrap_err().to_string();
        assert!(e.contains("not a directory"), "{e}");
    }
}
