//! Reading binary detector samples (a score and a 0/1 target per row) from any detector's dump,
//! for `fl-lab loss-cdf --samples`.
//!
//! Formats:
//! - CSV with a header naming a score column (`logit`, or `prob`/`probability`) and a target column
//!   (`target` or `label`); other columns are ignored.
//! - `.npy` (NumPy format 1.x/2.x, little-endian float32 or float64, C order) of shape `(N, 2)`:
//!   column 0 the score, column 1 the target. The score kind comes from `--values`.
//!
//! Probabilities are clamped to [1e-12, 1 - 1e-12] before taking the logit, so that a saturated
//! output (p = 1 exactly in float32) gives a large finite loss instead of infinity; the number of
//! clamped rows is reported.

use super::loss_cdf::Reservoir;
use anyhow::{anyhow, bail, Context, Result};
use rand::Rng;
use std::io::Read;
use std::path::Path;

/// What the score column holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ValueKind {
    Logits,
    Probs,
}

/// Samples split by target and reduced to their margins `x_t`, sampled down to the caps.
#[derive(Debug, Clone)]
pub struct SampleSets {
    pub positives: Reservoir,
    pub negatives: Reservoir,
    /// Probabilities that had to be clamped away from 0 or 1.
    pub clamped: u64,
}

impl SampleSets {
    pub fn new(max_pos: usize, max_neg: usize) -> Self {
        Self {
            positives: Reservoir::new(max_pos),
            negatives: Reservoir::new(max_neg),
            clamped: 0,
        }
    }

    /// Adds one sample given by its logit.
    pub fn push_logit<R: Rng>(&mut self, logit: f32, positive: bool, rng: &mut R) {
        if positive {
            self.positives.push(logit, rng);
        } else {
            self.negatives.push(-logit, rng);
        }
    }

    fn push_value<R: Rng>(
        &mut self,
        value: f64,
        kind: ValueKind,
        target: f64,
        rng: &mut R,
    ) -> Result<()> {
        if !value.is_finite() {
            bail!("score {value} is not a finite number");
        }
        let positive = if target == 1.0 {
            true
        } else if target == 0.0 {
            false
        } else {
            bail!("target {target} is not 0 or 1")
        };
        let logit = match kind {
            // The analysis runs in float32, where 1e300 would become infinite.
            ValueKind::Logits if !(value as f32).is_finite() => {
                bail!("logit {value:?} is outside the float32 range")
            }
            ValueKind::Logits => value,
            ValueKind::Probs => {
                if !(0.0..=1.0).contains(&value) {
                    bail!("probability {value} is outside [0, 1]");
                }
                const EPS: f64 = 1e-12;
                let p = value.clamp(EPS, 1.0 - EPS);
                if p != value {
                    self.clamped += 1;
                }
                p.ln() - (-p).ln_1p()
            }
        };
        self.push_logit(logit as f32, positive, rng);
        Ok(())
    }
}

/// Reads a samples file (CSV or `.npy`, by extension) into reservoirs of the given capacities.
pub fn read_samples<R: Rng>(
    path: &Path,
    kind: Option<ValueKind>,
    max_pos: usize,
    max_neg: usize,
    rng: &mut R,
) -> Result<SampleSets> {
    let is_npy = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("npy"));
    let sets = if is_npy {
        let kind = kind.ok_or_else(|| {
            anyhow!(
                "{}: a .npy file has no header; say what column 0 holds with --values logits|probs",
                path.display()
            )
        })?;
        read_npy(path, kind, max_pos, max_neg, rng)
    } else {
        read_csv(path, kind, max_pos, max_neg, rng)
    }?;
    if sets.positives.seen() == 0 {
        bail!(
            "{}: no positive samples (target 1); the loss CDF needs both sets",
            path.display()
        );
    }
    if sets.negatives.seen() == 0 {
        bail!(
            "{}: no negative samples (target 0); the loss CDF needs both sets",
            path.display()
        );
    }
    Ok(sets)
}

fn read_csv<R: Rng>(
    path: &Path,
    kind: Option<ValueKind>,
    max_pos: usize,
    max_neg: usize,
    rng: &mut R,
) -> Result<SampleSets> {
    let mut reader = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .from_path(path)
        .with_context(|| format!("cannot open samples file {}", path.display()))?;
    let headers = reader
        .headers()
        .with_context(|| format!("{}: cannot read the CSV header", path.display()))?
        .clone();
    let find = |names: &[&str]| {
        headers
            .iter()
            .position(|h| names.contains(&h.to_ascii_lowercase().as_str()))
    };
    let (score_col, header_kind) = match (
        find(&["logit", "logits"]),
        find(&["prob", "probs", "probability"]),
    ) {
        (Some(c), None) => (c, ValueKind::Logits),
        (None, Some(c)) => (c, ValueKind::Probs),
        (Some(_), Some(_)) => bail!(
            "{}: the header has both a logit and a probability column; keep one",
            path.display()
        ),
        (None, None) => bail!(
            "{}: the header needs a score column named 'logit' or 'prob' (found: {})",
            path.display(),
            headers.iter().collect::<Vec<_>>().join(", ")
        ),
    };
    if let Some(k) = kind {
        if k != header_kind {
            bail!(
                "{}: --values {:?} contradicts the header's score column '{}'",
                path.display(),
                k,
                &headers[score_col]
            );
        }
    }
    let target_col = find(&["target", "label"]).ok_or_else(|| {
        anyhow!(
            "{}: the header needs a 'target' column of 0/1 values",
            path.display()
        )
    })?;
    let mut sets = SampleSets::new(max_pos, max_neg);
    let mut record = csv::StringRecord::new();
    loop {
        let more = reader
            .read_record(&mut record)
            .with_context(|| format!("{}: malformed CSV", path.display()))?;
        if !more {
            break;
        }
        let line = record.position().map(|p| p.line()).unwrap_or(0);
        let parse = |col: usize, what: &str| -> Result<f64> {
            let field = record.get(col).unwrap_or("");
            field.parse::<f64>().map_err(|_| {
                anyhow!(
                    "{}:{line}: {what} '{field}' is not a number",
                    path.display()
                )
            })
        };
        let value = parse(score_col, &headers[score_col])?;
        let target = parse(target_col, "target")?;
        sets.push_value(value, header_kind, target, rng)
            .with_context(|| format!("{}:{line}", path.display()))?;
    }
    Ok(sets)
}

fn read_npy<R: Rng>(
    path: &Path,
    kind: ValueKind,
    max_pos: usize,
    max_neg: usize,
    rng: &mut R,
) -> Result<SampleSets> {
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .with_context(|| format!("cannot read samples file {}", path.display()))?;
    let (header, data) =
        split_npy(&bytes).with_context(|| format!("{}: not a NumPy .npy file", path.display()))?;
    let descr = npy_field(header, "descr")
        .with_context(|| format!("{}: header has no 'descr'", path.display()))?;
    let width = match descr.trim_matches(|c| c == '\'' || c == '"') {
        "<f4" => 4,
        "<f8" => 8,
        other => bail!(
            "{}: dtype {other} is not supported; save float32 or float64 (little-endian)",
            path.display()
        ),
    };
    if npy_field(header, "fortran_order").is_some_and(|v| v.starts_with("True")) {
        bail!(
            "{}: Fortran-ordered arrays are not supported; save with np.ascontiguousarray",
            path.display()
        );
    }
    let shape = npy_field(header, "shape")
        .with_context(|| format!("{}: header has no 'shape'", path.display()))?;
    let dims: Vec<usize> = shape
        .trim_matches(|c| c == '(' || c == ')')
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<usize>())
        .collect::<std::result::Result<_, _>>()
        .map_err(|_| anyhow!("{}: cannot read shape {shape}", path.display()))?;
    if dims.len() != 2 || dims[1] != 2 {
        bail!(
            "{}: expected an array of shape (N, 2) [score, target], found {shape}",
            path.display()
        );
    }
    let n = dims[0];
    // A header can claim any shape: compute the size without overflow before trusting it.
    let expected = n.checked_mul(2 * width).ok_or_else(|| {
        anyhow!(
            "{}: shape {shape} is too large for any file",
            path.display()
        )
    })?;
    // Bytes after the array are ignored, as np.load does (np.save can append a second array).
    if data.len() < expected {
        bail!(
            "{}: the file is truncated ({} data bytes, shape {shape} of {descr} needs {expected})",
            path.display(),
            data.len()
        );
    }
    let value_at = |i: usize| -> f64 {
        let b = &data[i * width..(i + 1) * width];
        if width == 4 {
            f32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f64
        } else {
            f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
        }
    };
    let mut sets = SampleSets::new(max_pos, max_neg);
    for row in 0..n {
        sets.push_value(value_at(2 * row), kind, value_at(2 * row + 1), rng)
            .with_context(|| format!("{}: row {row}", path.display()))?;
    }
    Ok(sets)
}

/// Splits a .npy file into its header dictionary text and its data bytes.
fn split_npy(bytes: &[u8]) -> Result<(&str, &[u8])> {
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        bail!("missing the \\x93NUMPY magic");
    }
    let (len, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
        v => bail!("unsupported .npy version {v}"),
    };
    let header = bytes
        .get(start..start + len)
        .ok_or_else(|| anyhow!("truncated header"))?;
    let header = std::str::from_utf8(header).map_err(|_| anyhow!("header is not text"))?;
    Ok((header, &bytes[start + len..]))
}

/// The raw text of one value in the header dict, e.g. `'<f4'`, `False` or `(10, 2)`.
fn npy_field<'a>(header: &'a str, key: &str) -> Option<&'a str> {
    let at = header.find(&format!("'{key}'"))? + key.len() + 2;
    let rest = header[at..].trim_start().strip_prefix(':')?.trim_start();
    let end = if rest.starts_with('(') {
        rest.find(')')? + 1
    } else {
        rest.find([',', '}'])?
    };
    Some(rest[..end].trim())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn rng() -> rand_chacha::ChaCha8Rng {
        rand_chacha::ChaCha8Rng::seed_from_u64(0)
    }

    fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn logits_and_probabilities_give_the_same_margins() {
        let dir = tempfile::tempdir().unwrap();
        let logits = [-7.5f64, -2.0, -0.25, 0.0, 0.5, 3.0, 9.0];
        let mut a = String::from("logit,target\n");
        let mut b = String::from("prob,target\n");
        for (i, x) in logits.iter().enumerate() {
            let t = i % 2;
            a += &format!("{x},{t}\n");
            b += &format!("{:.17e},{t}\n", 1.0 / (1.0 + (-x).exp()));
        }
        let sa = read_samples(&write(dir.path(), "a.csv", &a), None, 100, 100, &mut rng()).unwrap();
        let sb = read_samples(&write(dir.path(), "b.csv", &b), None, 100, 100, &mut rng()).unwrap();
        for (x, y) in sa
            .positives
            .into_items()
            .iter()
            .zip(sb.positives.into_items())
        {
            assert!((x - y).abs() < 1e-5, "{x} {y}");
        }
        for (x, y) in sa
            .negatives
            .into_items()
            .iter()
            .zip(sb.negatives.into_items())
        {
            assert!((x - y).abs() < 1e-5, "{x} {y}");
        }
    }

    #[test]
    fn bad_rows_name_their_line() {
        let dir = tempfile::tempdir().unwrap();
        let cases = [
            ("prob,target\n0.5,1\n1.5,0\n", ":3", "outside [0, 1]"),
            ("prob,target\n0.5,1\n0.5,2\n", ":3", "not 0 or 1"),
            ("logit,target\n0.5,1\nNaN,0\n", ":3", "not a finite"),
            ("logit,target\n0.5,1\nabc,0\n", ":3", "not a number"),
            ("logit,target\n0.5,0\n-1,0\n", "", "no positive samples"),
            ("score,target\n0.5,0\n", "", "named 'logit' or 'prob'"),
        ];
        for (i, (text, line, msg)) in cases.iter().enumerate() {
            let p = write(dir.path(), &format!("c{i}.csv"), text);
            let e = format!(
                "{:#}",
                read_samples(&p, None, 10, 10, &mut rng()).unwrap_err()
            );
            assert!(
                e.contains(msg) && e.contains(&format!("c{i}.csv{line}")),
                "case {i}: {e}"
            );
        }
    }

    #[test]
    fn reads_npy_float32_and_float64() {
        let dir = tempfile::tempdir().unwrap();
        for (descr, width) in [("<f4", 4), ("<f8", 8)] {
            let rows = [(1.5f64, 1.0f64), (-2.0, 0.0), (0.25, 0.0)];
            let header =
                format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': (3, 2), }}");
            let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
            let pad = 64 - (10 + header.len() + 1) % 64;
            let hdr = format!("{header}{}\n", " ".repeat(pad));
            bytes.extend((hdr.len() as u16).to_le_bytes());
            bytes.extend(hdr.as_bytes());
            for (v, t) in rows {
                if width == 4 {
                    bytes.extend((v as f32).to_le_bytes());
                    bytes.extend((t as f32).to_le_bytes());
                } else {
                    bytes.extend(v.to_le_bytes());
                    bytes.extend(t.to_le_bytes());
                }
            }
            let p = dir.path().join(format!("s{width}.npy"));
            std::fs::write(&p, bytes).unwrap();
            let s = read_samples(&p, Some(ValueKind::Logits), 10, 10, &mut rng()).unwrap();
            assert_eq!(s.positives.into_items(), vec![1.5]);
            assert_eq!(s.negatives.into_items(), vec![2.0, -0.25]);
            let e = read_samples(&p, None, 10, 10, &mut rng())
                .unwrap_err()
                .to_string();
            assert!(e.contains("--values"), "{e}");
        }
    }
}
