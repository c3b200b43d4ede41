//! COCO detection results: a JSON array of `{image_id, category_id, bbox: [x, y, w, h], score}`.
//!
//! The file is read with a small dedicated scanner rather than serde_json because (a) numbers must
//! be parsed with correct rounding, exactly as Python's `json` does (serde_json's default float
//! parser may be one ulp off for 17-digit numbers, which can reorder tied scores), (b) every error
//! must name the offending record, and (c) Python's `json.dump` writes `NaN`/`Infinity` for bad
//! scores, which is not JSON but must still get a clear message. Keys other than the four above
//! (`segmentation`, `id`, ...) are skipped; when a key repeats, the last one wins, as in Python.
//!
//! Like pycocotools' `COCO.loadRes`, a detection's area is `w * h` and its id is `index + 1`
//! (see [`Detection::area`]); these are derived in `eval::coco`, not stored.

use crate::data::coco::CocoDataset;
use anyhow::Context;
use std::collections::HashSet;
use std::path::Path;
use thiserror::Error;

/// One detection of a results file, in file order.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Detection {
    pub image_id: i64,
    pub category_id: i64,
    /// [x, y, width, height], continuous pixel coordinates.
    pub bbox: [f64; 4],
    pub score: f64,
}

impl Detection {
    /// The area pycocotools' `loadRes` assigns to a bbox result (used for area ranges).
    pub fn area(&self) -> f64 {
        self.bbox[2] * self.bbox[3]
    }
}

#[derive(Debug, Error, PartialEq)]
pub enum ResultsError {
    #[error("invalid JSON at line {line}, column {column}: {msg}")]
    Syntax {
        line: usize,
        column: usize,
        msg: String,
    },
    #[error("results must be a JSON array of detection objects (like pycocotools' loadRes): {0}")]
    NotAnArray(String),
    #[error("record {index} (0-based): {msg}")]
    Record { index: usize, msg: String },
}

/// Reads a results file and checks it against the ground truth (see [`check_against`]).
pub fn load_results(path: &Path, gt: &CocoDataset) -> anyhow::Result<Vec<Detection>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read results file {}", path.display()))?;
    let dets =
        parse_results(&text).with_context(|| format!("invalid results file {}", path.display()))?;
    check_against(&dets, gt).with_context(|| {
        format!(
            "results file {} does not match the ground truth",
            path.display()
        )
    })?;
    Ok(dets)
}

/// Writes detections as a COCO results JSON array, atomically.
pub fn save_results(path: &Path, dets: &[Detection]) -> anyhow::Result<()> {
    let bytes = serde_json::to_vec(dets)?;
    crate::util::write_atomic(path, &bytes)
}

/// Every detection must refer to an image and a category of the ground truth. pycocotools
/// asserts the first ('Results do not correspond to current coco set') and silently drops
/// detections of unknown categories; both are errors here, since either means the results were
/// made for another dataset or with a wrong class mapping.
pub fn check_against(dets: &[Detection], gt: &CocoDataset) -> Result<(), ResultsError> {
    let images: HashSet<i64> = gt.images.iter().map(|i| i.id).collect();
    let cats: HashSet<i64> = gt.categories.iter().map(|c| c.id).collect();
    for (index, d) in dets.iter().enumerate() {
        if !images.contains(&d.image_id) {
            return Err(ResultsError::Record {
                index,
                msg: format!(
                    "image_id {} is not an image of the ground truth (pycocotools: 'Results do not correspond to current coco set')",
                    d.image_id
                ),
            });
        }
        if !cats.contains(&d.category_id) {
            return Err(ResultsError::Record {
                index,
                msg: format!(
                    "category_id {} is not a category of the ground truth",
                    d.category_id
                ),
            });
        }
    }
    Ok(())
}

/// Parses a results JSON text. An empty array gives an empty list (pycocotools' `loadRes` fails
/// on it with an IndexError; `eval::coco::evaluate` scores it as COCOeval scores an empty result
/// set: 0 for every category with ground truth).
pub fn parse_results(text: &str) -> Result<Vec<Detection>, ResultsError> {
    let mut p = Scanner {
        b: text.as_bytes(),
        i: 0,
    };
    p.ws();
    match p.peek() {
        Some(b'[') => p.i += 1,
        Some(_) => {
            return Err(ResultsError::NotAnArray(
                "the top-level value is not an array".into(),
            ))
        }
        None => return Err(ResultsError::NotAnArray("the file is empty".into())),
    }
    let mut out = Vec::new();
    p.ws();
    if p.peek() == Some(b']') {
        p.i += 1;
    } else {
        loop {
            p.ws();
            let index = out.len();
            if p.peek() != Some(b'{') {
                return Err(ResultsError::NotAnArray(format!(
                    "element {index} is not an object ({})",
                    p.where_()
                )));
            }
            out.push(p.record(index)?);
            p.ws();
            match p.next() {
                Some(b',') => continue,
                Some(b']') => break,
                _ => return Err(p.syntax("expected ',' or ']' after a record")),
            }
        }
    }
    p.ws();
    if p.i != p.b.len() {
        return Err(p.syntax("unexpected text after the array"));
    }
    Ok(out)
}

struct Scanner<'a> {
    b: &'a [u8],
    i: usize,
}

/// A number token as written: finite, or one of Python's non-JSON literals.
enum Num {
    Finite(f64),
    NonFinite(&'static str),
}

impl<'a> Scanner<'a> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }
    fn next(&mut self) -> Option<u8> {
        let c = self.peek();
        self.i += 1;
        c
    }
    fn ws(&mut self) {
        while let Some(b' ' | b'\n' | b'\r' | b'\t') = self.peek() {
            self.i += 1;
        }
    }
    fn line_col(&self) -> (usize, usize) {
        let upto = &self.b[..self.i.min(self.b.len())];
        let line = upto.iter().filter(|&&c| c == b'\n').count() + 1;
        let col = upto.iter().rev().take_while(|&&c| c != b'\n').count() + 1;
        (line, col)
    }
    fn where_(&self) -> String {
        let (l, c) = self.line_col();
        format!("line {l}, column {c}")
    }
    fn syntax(&self, msg: &str) -> ResultsError {
        let (line, column) = self.line_col();
        ResultsError::Syntax {
            line,
            column,
            msg: msg.into(),
        }
    }
    fn expect(&mut self, c: u8, what: &str) -> Result<(), ResultsError> {
        self.ws();
        if self.peek() == Some(c) {
            self.i += 1;
            Ok(())
        } else {
            Err(self.syntax(what))
        }
    }

    /// A string's raw bytes between the quotes (escapes are skipped, not decoded: keys that
    /// matter are plain ASCII).
    fn string(&mut self) -> Result<&'a [u8], ResultsError> {
        if self.peek() != Some(b'"') {
            return Err(self.syntax("expected a string"));
        }
        self.i += 1;
        let start = self.i;
        loop {
            match self.next() {
                Some(b'"') => return Ok(&self.b[start..self.i - 1]),
                Some(b'\\') => self.i += 1,
                Some(_) => {}
                None => return Err(self.syntax("unterminated string")),
            }
        }
    }

    fn number(&mut self) -> Result<Num, ResultsError> {
        for (lit, name) in [
            (&b"NaN"[..], "NaN"),
            (b"Infinity", "Infinity"),
            (b"-Infinity", "-Infinity"),
        ] {
            if self.b[self.i..].starts_with(lit) {
                self.i += lit.len();
                return Ok(Num::NonFinite(name));
            }
        }
        let start = self.i;
        while let Some(b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E') = self.peek() {
            self.i += 1;
        }
        let tok = std::str::from_utf8(&self.b[start..self.i]).unwrap_or("");
        if tok.is_empty() {
            return Err(self.syntax("expected a number"));
        }
        // std's parser is correctly rounded, like Python's float(); like it, it turns a number
        // beyond f64 (1e400) into infinity, which gets the non-finite literals' messages.
        match tok.parse::<f64>() {
            Ok(v) if v.is_infinite() => Ok(Num::NonFinite("a number beyond the float64 range")),
            Ok(v) => Ok(Num::Finite(v)),
            Err(_) => Err(self.syntax(&format!("'{tok}' is not a number"))),
        }
    }

    /// Skips any JSON value (plus Python's NaN/Infinity literals).
    fn skip_value(&mut self) -> Result<(), ResultsError> {
        self.ws();
        match self.peek() {
            Some(b'"') => {
                self.string()?;
            }
            Some(b'[') | Some(b'{') => {
                let mut depth = 0usize;
                loop {
                    self.ws();
                    match self.peek() {
                        Some(b'[') | Some(b'{') => {
                            depth += 1;
                            self.i += 1
                        }
                        Some(b']') | Some(b'}') => {
                            depth -= 1;
                            self.i += 1;
                            if depth == 0 {
                                return Ok(());
                            }
                        }
                        Some(b'"') => {
                            self.string()?;
                        }
                        Some(b',') | Some(b':') => self.i += 1,
                        Some(_) => self.scalar()?,
                        None => return Err(self.syntax("unterminated array or object")),
                    }
                }
            }
            Some(_) => self.scalar()?,
            None => return Err(self.syntax("expected a value")),
        }
        Ok(())
    }

    fn scalar(&mut self) -> Result<(), ResultsError> {
        for lit in [&b"true"[..], b"false", b"null"] {
            if self.b[self.i..].starts_with(lit) {
                self.i += lit.len();
                return Ok(());
            }
        }
        self.number().map(|_| ())
    }

    fn id(&mut self, index: usize, key: &str) -> Result<i64, ResultsError> {
        self.ws();
        let rec = |msg: String| ResultsError::Record { index, msg };
        if self.peek() == Some(b'"') {
            return Err(rec(format!("{key} must be a number, not a string")));
        }
        let start = self.i;
        match self.number()? {
            Num::Finite(v) => {
                let tok = std::str::from_utf8(&self.b[start..self.i]).unwrap_or("");
                if let Ok(n) = tok.parse::<i64>() {
                    return Ok(n);
                }
                // Python compares 3.0 == 3, so an integral float still names image 3.
                if v.fract() == 0.0 && v.abs() < 9.0e15 {
                    Ok(v as i64)
                } else {
                    Err(rec(format!("{key} {tok} is not an integer id")))
                }
            }
            Num::NonFinite(name) => Err(rec(format!("{key} is {name}"))),
        }
    }

    fn record(&mut self, index: usize) -> Result<Detection, ResultsError> {
        let rec = |msg: String| ResultsError::Record { index, msg };
        self.i += 1; // '{'
        let (mut image_id, mut category_id, mut bbox, mut score) = (None, None, None, None);
        self.ws();
        if self.peek() == Some(b'}') {
            self.i += 1;
        } else {
            loop {
                self.ws();
                let key = self.string()?;
                self.expect(b':', "expected ':' after a key")?;
                self.ws();
                match key {
                    b"image_id" => image_id = Some(self.id(index, "image_id")?),
                    b"category_id" => category_id = Some(self.id(index, "category_id")?),
                    b"score" => {
                        if self.peek() == Some(b'"') {
                            return Err(rec("score must be a number, not a string".into()));
                        }
                        if self.b[self.i..].starts_with(b"null") {
                            return Err(rec("score is null".into()));
                        }
                        score = Some(match self.number()? {
                            Num::Finite(v) => v,
                            Num::NonFinite(name) => {
                                return Err(rec(format!(
                                    "score is {name}; scores must be finite numbers"
                                )))
                            }
                        });
                    }
                    b"bbox" => {
                        if self.peek() != Some(b'[') {
                            return Err(rec("bbox must be an array [x, y, width, height]".into()));
                        }
                        self.i += 1;
                        let mut v = [0.0f64; 4];
                        let mut n = 0usize;
                        self.ws();
                        if self.peek() == Some(b']') {
                            self.i += 1;
                        } else {
                            loop {
                                self.ws();
                                match self.number()? {
                                    Num::Finite(x) => {
                                        if n < 4 {
                                            v[n] = x;
                                        }
                                    }
                                    Num::NonFinite(name) => {
                                        return Err(rec(format!(
                                        "bbox value {n} is {name}; box coordinates must be finite"
                                    )))
                                    }
                                }
                                n += 1;
                                self.ws();
                                match self.next() {
                                    Some(b',') => continue,
                                    Some(b']') => break,
                                    _ => {
                                        self.i -= 1;
                                        return Err(self.syntax("expected ',' or ']' in bbox"));
                                    }
                                }
                            }
                        }
                        if n != 4 {
                            return Err(rec(format!(
                                "bbox has {n} numbers, expected 4 ([x, y, width, height])"
                            )));
                        }
                        bbox = Some(v);
                    }
                    _ => self.skip_value()?,
                }
                self.ws();
                match self.next() {
                    Some(b',') => continue,
                    Some(b'}') => break,
                    _ => {
                        self.i -= 1;
                        return Err(self.syntax("expected ',' or '}' in a record"));
                    }
                }
            }
        }
        let missing = |k: &str| rec(format!("missing '{k}'"));
        Ok(Detection {
            image_id: image_id.ok_or_else(|| missing("image_id"))?,
            category_id: category_id.ok_or_else(|| missing("category_id"))?,
            bbox: bbox.ok_or_else(|| missing("bbox"))?,
            score: score.ok_or_else(|| missing("score"))?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        parse_results(text).unwrap_err().to_string()
    }

    #[test]
    fn parses_records_and_skips_other_keys() {
        let t = r#" [ {"image_id": 3, "category_id": 7, "bbox": [1, 2.5, 3e0, 4], "score": 0.9,
                       "segmentation": [[1, 2, {"a": "x\"]"}]], "id": 42},
                     {"score": 1, "bbox": [0,0,1,1], "category_id": 2.0, "image_id": 5} ] "#;
        let d = parse_results(t).unwrap();
        assert_eq!(d.len(), 2);
        assert_eq!(
            d[0],
            Detection {
                image_id: 3,
                category_id: 7,
                bbox: [1.0, 2.5, 3.0, 4.0],
                score: 0.9
            }
        );
        assert_eq!(d[1].category_id, 2);
        assert_eq!(d[1].area(), 1.0);
    }

    #[test]
    fn numbers_are_correctly_rounded() {
        // 17 significant digits: a naive parser can be one ulp off here.
        for s in [
            "0.30000000000000004",
            "0.12345678901234567",
            "123.45678901234567",
            "9.999999999999999e-5",
        ] {
            let t = format!(r#"[{{"image_id":1,"category_id":1,"bbox":[0,0,1,1],"score":{s}}}]"#);
            assert_eq!(
                parse_results(&t).unwrap()[0].score,
                s.parse::<f64>().unwrap()
            );
        }
    }

    #[test]
    fn empty_array_is_empty() {
        assert!(parse_results(" [ ] ").unwrap().is_empty());
    }

    #[test]
    fn bad_records_are_named() {
        let e = err(
            r#"[{"image_id":1,"category_id":1,"bbox":[0,0,1,1],"score":0.5},
                        {"image_id":1,"category_id":1,"bbox":[0,0,1],"score":0.5}]"#,
        );
        assert!(e.contains("record 1") && e.contains("3 numbers"), "{e}");
        let e = err(r#"[{"image_id":1,"category_id":1,"bbox":[0,0,1,1],"score":NaN}]"#);
        assert!(e.contains("record 0") && e.contains("NaN"), "{e}");
        let e = err(r#"[{"image_id":1,"category_id":1,"bbox":[0,0,1,1]}]"#);
        assert!(e.contains("missing 'score'"), "{e}");
        let e = err(r#"[{"image_id":1.5,"category_id":1,"bbox":[0,0,1,1],"score":1}]"#);
        assert!(e.contains("not an integer id"), "{e}");
        let e = err(r#"{"annotations": []}"#);
        assert!(e.contains("array"), "{e}");
        let e = err(r#"[{"image_id":1,"category_id":1,"bbox":[0,0,1,1],"score":1}"#);
        assert!(e.contains("line 1"), "{e}");
        let e = err("");
        assert!(e.contains("empty"), "{e}");
    }

    #[test]
    fn unknown_ids_are_named() {
        let gt: CocoDataset = serde_json::from_str(
            r#"{"images":[{"id":1,"file_name":"a","width":10,"height":10}],
                "categories":[{"id":4,"name":"x"}], "annotations":[]}"#,
        )
        .unwrap();
        let d = |image_id, category_id| Detection {
            image_id,
            category_id,
            bbox: [0.0, 0.0, 1.0, 1.0],
            score: 1.0,
        };
        assert!(check_against(&[d(1, 4)], &gt).is_ok());
        let e = check_against(&[d(1, 4), d(2, 4)], &gt)
            .unwrap_err()
            .to_string();
        assert!(e.contains("record 1") && e.contains("image_id 2"), "{e}");
        let e = check_against(&[d(1, 5)], &gt).unwrap_err().to_string();
        assert!(e.contains("category_id 5"), "{e}");
    }
}
