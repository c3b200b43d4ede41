//! COCO instances JSON (`images`, `annotations`, `categories`): load with validation, save atomically.
//!
//! `area` is kept exactly as given, because COCO evaluation decides small/medium/large by it (for COCO
//! itself it is the mask area, not the box area). Annotations without `area` get the box area.
//!
//! Box policy: a box with non-positive width or height is an error. A box that sticks out of its image,
//! partly or even entirely, is kept as given, because evaluation must see the ground truth exactly as
//! pycocotools does; the loader clips it to the image for training and drops it from the training
//! targets if nothing is left. [`CocoDataset::boxes_partly_outside`] counts them so commands can warn.

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::path::Path;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CocoImage {
    pub id: i64,
    pub file_name: String,
    pub width: u32,
    pub height: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CocoAnnotation {
    pub id: i64,
    pub image_id: i64,
    pub category_id: i64,
    /// [x, y, width, height] in pixels, continuous coordinates.
    pub bbox: [f64; 4],
    #[serde(default = "missing_area")]
    pub area: f64,
    /// 1 for a crowd region, else 0; read from any JSON value pycocotools reads as a truth value
    /// (0/1 and other integers, `true`/`false`, `null`), written as 0 or 1.
    #[serde(default, deserialize_with = "crowd_flag")]
    pub iscrowd: u8,
}

fn missing_area() -> f64 {
    f64::NAN
}

/// pycocotools ignores a ground truth where `iscrowd` is truthy in Python, so `true`, `2` or
/// `1.0` mark a crowd and `false`, `0` or `null` do not; anything else (a string, a list) is an
/// error naming the field.
fn crowd_flag<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<u8, D::Error> {
    use serde::de::Error;
    match serde_json::Value::deserialize(d)? {
        serde_json::Value::Null => Ok(0),
        serde_json::Value::Bool(b) => Ok(u8::from(b)),
        serde_json::Value::Number(n) => Ok(u8::from(n.as_f64() != Some(0.0))),
        other => Err(D::Error::custom(format!(
            "iscrowd must be a number, true/false or null (as pycocotools reads it), got {other}"
        ))),
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CocoCategory {
    pub id: i64,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub supercategory: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct CocoDataset {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub info: Option<serde_json::Value>,
    pub images: Vec<CocoImage>,
    #[serde(default)]
    pub annotations: Vec<CocoAnnotation>,
    pub categories: Vec<CocoCategory>,
}

impl CocoDataset {
    /// Reads and validates a COCO instances file. Errors name the file and the offending field.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read COCO file {}", path.display()))?;
        // serde_json's message carries the line and column, and the missing or mistyped field.
        let mut ds: CocoDataset = serde_json::from_str(&text).map_err(|e| {
            anyhow::anyhow!("{} is not a valid COCO instances file: {e}", path.display())
        })?;
        ds.fill_missing_area();
        ds.validate()
            .with_context(|| format!("invalid COCO file {}", path.display()))?;
        Ok(ds)
    }

    /// Writes the dataset as JSON through a temporary file and a rename.
    pub fn save(&self, path: &Path) -> Result<()> {
        let bytes = serde_json::to_vec(self)?;
        crate::util::write_atomic(path, &bytes)
    }

    fn fill_missing_area(&mut self) {
        for a in &mut self.annotations {
            if a.area.is_nan() {
                a.area = a.bbox[2] * a.bbox[3];
            }
        }
    }

    /// Checks the dataset is not empty, ids are unique, references resolve, and boxes are finite
    /// (also in float32) with positive size. Ids may be any integers, negative ones included, as in
    /// pycocotools.
    pub fn validate(&self) -> Result<()> {
        if self.images.is_empty() {
            bail!("images: the dataset has no images");
        }
        if self.categories.is_empty() {
            bail!("categories: the dataset has no categories");
        }
        let mut image_ids = HashSet::new();
        for img in &self.images {
            if !image_ids.insert(img.id) {
                bail!("images: duplicate image id {}", img.id);
            }
            if img.width == 0 || img.height == 0 {
                bail!(
                    "images: image id {} ('{}') has zero width or height",
                    img.id,
                    img.file_name
                );
            }
        }
        let mut cat_ids = HashSet::new();
        for c in &self.categories {
            if !cat_ids.insert(c.id) {
                bail!("categories: duplicate category id {}", c.id);
            }
        }
        let mut ann_ids = HashSet::new();
        for a in &self.annotations {
            if !ann_ids.insert(a.id) {
                bail!("annotations: duplicate annotation id {}", a.id);
            }
            if !image_ids.contains(&a.image_id) {
                bail!(
                    "annotations: annotation id {} refers to unknown image_id {}",
                    a.id,
                    a.image_id
                );
            }
            if !cat_ids.contains(&a.category_id) {
                bail!(
                    "annotations: annotation id {} refers to unknown category_id {}",
                    a.id,
                    a.category_id
                );
            }
            if a.bbox.iter().any(|v| !v.is_finite()) || !a.area.is_finite() {
                bail!(
                    "annotations: annotation id {} has a non-finite bbox or area",
                    a.id
                );
            }
            // The loader computes x + w and y + h in float32, where 1e39 or 3e38 + 3e38 become
            // infinite (or NaN) and the clipped box anything from nothing to the whole image.
            let [x, y, w, h] = a.bbox.map(|v| v as f32);
            if ![x, y, w, h, x + w, y + h].iter().all(|v| v.is_finite()) {
                bail!(
                    "annotations: annotation id {} has bbox {:?} beyond the float32 range",
                    a.id,
                    a.bbox
                );
            }
            if a.bbox[2] <= 0.0 || a.bbox[3] <= 0.0 {
                bail!(
                    "annotations: annotation id {} has bbox {:?} with non-positive width or height",
                    a.id,
                    a.bbox
                );
            }
        }
        Ok(())
    }

    /// Number of boxes that extend past their image's border (the loader clips them).
    pub fn boxes_partly_outside(&self) -> usize {
        let sizes: HashMap<i64, (u32, u32)> = self
            .images
            .iter()
            .map(|i| (i.id, (i.width, i.height)))
            .collect();
        self.annotations
            .iter()
            .filter(|a| match sizes.get(&a.image_id) {
                Some(&(w, h)) => {
                    let [x, y, bw, bh] = a.bbox;
                    x < 0.0 || y < 0.0 || x + bw > w as f64 || y + bh > h as f64
                }
                None => false,
            })
            .count()
    }

    /// Category name by id, for drawing and reports.
    pub fn category_name(&self, id: i64) -> Option<&str> {
        self.categories
            .iter()
            .find(|c| c.id == id)
            .map(|c| c.name.as_str())
    }

    /// Maps category ids (sorted ascending) to contiguous class indices 0..K and back.
    pub fn category_map(&self) -> CategoryMap {
        CategoryMap::new(self.categories.iter().map(|c| c.id))
    }

    /// Annotations grouped by image id, in file order.
    pub fn annotations_by_image(&self) -> HashMap<i64, Vec<&CocoAnnotation>> {
        let mut m: HashMap<i64, Vec<&CocoAnnotation>> = HashMap::new();
        for a in &self.annotations {
            m.entry(a.image_id).or_default().push(a);
        }
        m
    }
}

/// Category id <-> contiguous class index (0-based; loss labels use index + 1, 0 being background).
#[derive(Debug, Clone, PartialEq)]
pub struct CategoryMap {
    ids: Vec<i64>,
    index: HashMap<i64, usize>,
}

impl CategoryMap {
    pub fn new(ids: impl IntoIterator<Item = i64>) -> Self {
        let mut ids: Vec<i64> = ids.into_iter().collect();
        ids.sort_unstable();
        ids.dedup();
        let index = ids.iter().enumerate().map(|(i, &id)| (id, i)).collect();
        Self { ids, index }
    }
    pub fn num_classes(&self) -> usize {
        self.ids.len()
    }
    pub fn index_of(&self, category_id: i64) -> Option<usize> {
        self.index.get(&category_id).copied()
    }
    pub fn category_id(&self, index: usize) -> Option<i64> {
        self.ids.get(index).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> CocoDataset {
        CocoDataset {
            info: None,
            images: vec![CocoImage {
                id: 3,
                file_name: "a.png".into(),
                width: 10,
                height: 8,
            }],
            annotations: vec![CocoAnnotation {
                id: 1,
                image_id: 3,
                category_id: 7,
                bbox: [1.0, 2.0, 3.0, 4.0],
                area: 10.5,
                iscrowd: 0,
            }],
            categories: vec![
                CocoCategory {
                    id: 7,
                    name: "b".into(),
                    supercategory: None,
                },
                CocoCategory {
                    id: 2,
                    name: "a".into(),
                    supercategory: None,
                },
            ],
        }
    }

    #[test]
    fn round_trip_keeps_everything() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.json");
        let ds = sample();
        ds.save(&p).unwrap();
        assert_eq!(CocoDataset::load(&p).unwrap(), ds);
    }

    #[test]
    fn category_map_is_sorted_and_contiguous() {
        let m = sample().category_map();
        assert_eq!(m.num_classes(), 2);
        assert_eq!(m.index_of(2), Some(0));
        assert_eq!(m.index_of(7), Some(1));
        assert_eq!(m.category_id(1), Some(7));
        assert_eq!(m.index_of(5), None);
    }

    fn load_err(text: &str) -> String {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("bad.json");
        std::fs::write(&p, text).unwrap();
        let e = format!("{:#}", CocoDataset::load(&p).unwrap_err());
        assert!(e.contains("bad.json"), "{e}");
        e
    }

    #[test]
    fn iscrowd_is_read_as_pycocotools_reads_it() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("crowd.json");
        let text = serde_json::to_string(&sample()).unwrap();
        for (value, crowd) in [
            ("0", 0),
            ("1", 1),
            ("2", 1),
            ("1.0", 1),
            ("0.0", 0),
            ("true", 1),
            ("false", 0),
            ("null", 0),
        ] {
            std::fs::write(
                &p,
                text.replace("\"iscrowd\":0", &format!("\"iscrowd\":{value}")),
            )
            .unwrap();
            let ds = CocoDataset::load(&p).unwrap();
            assert_eq!(ds.annotations[0].iscrowd, crowd, "iscrowd {value}");
        }
        let e = load_err(&text.replace("\"iscrowd\":0", "\"iscrowd\":\"yes\""));
        assert!(e.contains("iscrowd must be"), "{e}");
    }

    fn sample_with(f: impl FnOnce(&mut CocoDataset)) -> String {
        let mut ds = sample();
        f(&mut ds);
        load_err(&serde_json::to_string(&ds).unwrap())
    }

    #[test]
    fn malformed_json_gives_line_and_column() {
        let e = load_err("{\n  \"images\": [\n    {\"id\": 1,, }\n  ]\n}");
        assert!(e.contains("line 3 column"), "{e}");
    }

    #[test]
    fn missing_field_is_named() {
        let e = load_err(
            r#"{"images": [{"id": 1, "file_name": "a.png", "width": 4}], "categories": []}"#,
        );
        assert!(e.contains("height"), "{e}");
    }

    #[test]
    fn bad_inputs_name_the_field() {
        let e = sample_with(|d| d.annotations[0].image_id = 42);
        assert!(
            e.contains("annotations") && e.contains("image_id 42"),
            "{e}"
        );
        let e = sample_with(|d| d.annotations[0].category_id = 99);
        assert!(e.contains("category_id 99"), "{e}");
        let e = sample_with(|d| d.annotations[0].bbox[2] = 0.0);
        assert!(e.contains("non-positive width or height"), "{e}");
        let e = sample_with(|d| d.annotations[0].bbox[3] = -2.0);
        assert!(e.contains("non-positive width or height"), "{e}");
        let e = sample_with(|d| {
            let a = d.annotations[0].clone();
            d.annotations.push(a)
        });
        assert!(e.contains("duplicate annotation id 1"), "{e}");
        let e = sample_with(|d| {
            let i = d.images[0].clone();
            d.images.push(i)
        });
        assert!(e.contains("duplicate image id 3"), "{e}");
        let e = sample_with(|d| d.categories[1].id = 7);
        assert!(e.contains("duplicate category id 7"), "{e}");
        let e = sample_with(|d| d.images[0].width = 0);
        assert!(e.contains("zero width or height"), "{e}");
        let e = sample_with(|d| {
            d.images.clear();
            d.annotations.clear()
        });
        assert!(e.contains("no images"), "{e}");
    }

    #[test]
    fn partly_outside_boxes_are_counted_not_rejected() {
        let mut ds = sample();
        ds.annotations[0].bbox = [8.0, 6.0, 5.0, 5.0];
        ds.validate().unwrap();
        assert_eq!(ds.boxes_partly_outside(), 1);
        assert_eq!(sample().boxes_partly_outside(), 0);
    }

    #[test]
    fn unknown_category_is_named() {
        let mut ds = sample();
        ds.annotations[0].category_id = 99;
        let e = format!("{:#}", ds.validate().unwrap_err());
        assert!(e.contains("category_id 99"), "{e}");
    }
}
