//! Output: CSV tables and PNG figures. Computes no statistics itself.

pub mod boxes;
pub mod data_stats;
pub mod heatmap;
pub mod imbalance;
pub mod loss_cdf;
pub mod pr_curve;
pub mod sweep;

use anyhow::{Context, Result};

/// Builds a CSV file in memory (to be written atomically by the caller).
pub fn csv_bytes(
    build: impl FnOnce(&mut csv::Writer<Vec<u8>>) -> csv::Result<()>,
) -> Result<Vec<u8>> {
    let mut w = csv::Writer::from_writer(Vec::new());
    build(&mut w)?;
    w.into_inner().context("cannot finish CSV")
}

/// How a results table was merged into the one already on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Merged {
    /// Rows in the file now.
    pub rows: usize,
    /// Rows of the earlier file kept as they were (runs this table does not cover).
    pub kept: usize,
}

/// Writes a table keyed by the `key` columns (config hash and seed) into `path`, merged with the
/// table already there: no row that `rows` does not replace is dropped or altered. Earlier rows
/// keep their place and their text (columns only they have are appended to the header, empty in
/// the new rows); a new row replaces the earlier one with its key in place; the rest are appended.
pub fn write_merged_csv(
    path: &std::path::Path,
    header: &[String],
    rows: &[Vec<String>],
    key: &[&str],
) -> Result<Merged> {
    let key_of = |cols: &[usize], rec: &[String]| -> Vec<String> {
        cols.iter()
            .map(|&c| rec.get(c).cloned().unwrap_or_default())
            .collect()
    };
    let position = |header: &[String], name: &str| header.iter().position(|h| h == name);
    let new_key_cols: Vec<usize> = key
        .iter()
        .map(|k| position(header, k).with_context(|| format!("no key column '{k}'")))
        .collect::<Result<_>>()?;
    let (mut old_header, mut old_rows) = (Vec::<String>::new(), Vec::<Vec<String>>::new());
    if path.exists() {
        let what = || {
            format!(
                "cannot merge into {} (move it away to write a new table)",
                path.display()
            )
        };
        let mut reader = csv::Reader::from_path(path).with_context(what)?;
        old_header = reader
            .headers()
            .with_context(what)?
            .iter()
            .map(String::from)
            .collect();
        for rec in reader.records() {
            old_rows.push(rec.with_context(what)?.iter().map(String::from).collect());
        }
        for k in key {
            if !old_rows.is_empty() && position(&old_header, k).is_none() {
                return Err(anyhow::anyhow!("no column '{k}'")).with_context(what);
            }
        }
    }
    let mut merged_header = header.to_vec();
    merged_header.extend(old_header.iter().filter(|h| !header.contains(h)).cloned());
    let widen = |row: &[String]| {
        let mut r = row.to_vec();
        r.resize(merged_header.len(), String::new());
        r
    };
    let new_by_key: std::collections::HashMap<Vec<String>, usize> = rows
        .iter()
        .enumerate()
        .map(|(i, r)| (key_of(&new_key_cols, r), i))
        .collect();
    let old_key_cols: Vec<usize> = key
        .iter()
        .filter_map(|k| position(&old_header, k))
        .collect();
    let mut placed = vec![false; rows.len()];
    let mut out_rows = Vec::new();
    let mut kept = 0;
    for old in &old_rows {
        match new_by_key.get(&key_of(&old_key_cols, old)) {
            Some(&i) if !placed[i] => {
                placed[i] = true;
                out_rows.push(widen(&rows[i]));
            }
            Some(_) => {} // a second earlier row of a run just rewritten
            None => {
                kept += 1;
                out_rows.push(
                    merged_header
                        .iter()
                        .map(|h| {
                            position(&old_header, h)
                                .and_then(|c| old.get(c).cloned())
                                .unwrap_or_default()
                        })
                        .collect(),
                );
            }
        }
    }
    for (i, row) in rows.iter().enumerate() {
        if !placed[i] {
            out_rows.push(widen(row));
        }
    }
    let bytes = csv_bytes(|w| {
        w.write_record(&merged_header)?;
        for r in &out_rows {
            w.write_record(r)?;
        }
        Ok(())
    })?;
    crate::util::write_atomic(path, &bytes)?;
    Ok(Merged {
        rows: out_rows.len(),
        kept,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn merging_keeps_every_row_it_does_not_replace_verbatim() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("results.csv");
        std::fs::write(
            &path,
            "label,seed,config_hash,loss.gamma,ap\nold,0,aaa,2.0,0.100000\nkept,1,bbb,0.0,0.2\n",
        )
        .unwrap();
        let header = strings(&["label", "seed", "config_hash", "ap", "extra"]);
        let rows = vec![
            strings(&["new", "0", "aaa", "0.3", "x"]),
            strings(&["added", "0", "ccc", "0.4", "y"]),
        ];
        let m = write_merged_csv(&path, &header, &rows, &["config_hash", "seed"]).unwrap();
        assert_eq!(m, Merged { rows: 3, kept: 1 });
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "label,seed,config_hash,ap,extra,loss.gamma\n\
             new,0,aaa,0.3,x,\n\
             kept,1,bbb,0.2,,0.0\n\
             added,0,ccc,0.4,y,\n"
        );
        // a table that cannot be read is an error naming it, and stays as it was
        std::fs::write(&path, "seed\n1\n").unwrap();
        let e = write_merged_csv(&path, &header, &rows, &["config_hash", "seed"]).unwrap_err();
        assert!(format!("{e:#}").contains("results.csv"), "{e:#}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "seed\n1\n");
    }
}
