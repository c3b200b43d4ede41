//! COCO bbox evaluation, identical to pycocotools 2.0.x `COCOeval` (`evaluate`, `accumulate`,
//! `summarize` with the default detection parameters). docs/paper.md §10 lists what that means;
//! the points where reimplementations usually drift are marked "pycocotools:" below.
//!
//! Layout of the results, as in pycocotools: `precision[t][r][k][a][m]` and `recall[t][k][a][m]`
//! with T = 10 IoU thresholds, R = 101 recall thresholds, K categories (sorted ids), A = 4 area
//! ranges (all, small, medium, large), M = 3 detection limits (1, 10, 100). Entries for categories
//! without ground truth in an area range are -1 and excluded from every mean.
//!
//! Work is split into units = (category, image) pairs that hold ground truth or detections; units
//! are matched in parallel, then each category's detections are merged and accumulated in parallel.

use super::results::Detection;
use crate::data::coco::CocoDataset;
use rayon::prelude::*;
use std::collections::HashMap;
use thiserror::Error;

pub const NUM_IOU: usize = 10;
pub const NUM_REC: usize = 101;
pub const NUM_AREA: usize = 4;
pub const NUM_MAXDET: usize = 3;
pub const MAX_DETS: [usize; NUM_MAXDET] = [1, 10, 100];
pub const AREA_LABELS: [&str; NUM_AREA] = ["all", "small", "medium", "large"];
/// pycocotools: `[[0, 1e5**2], [0, 32**2], [32**2, 96**2], [96**2, 1e5**2]]`, both bounds inclusive.
pub const AREA_RANGES: [[f64; 2]; NUM_AREA] =
    [[0.0, 1e10], [0.0, 1024.0], [1024.0, 9216.0], [9216.0, 1e10]];
/// Names of the 12 summary numbers, in `COCOeval.stats` order.
pub const STAT_NAMES: [&str; 12] = [
    "AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl",
];

/// `np.linspace(.5, .95, 10)`, reproduced bit for bit (numpy computes `i * step + start` and then
/// sets the last element to `stop`).
pub fn iou_thresholds() -> [f64; NUM_IOU] {
    let step = (0.95f64 - 0.5) / 9.0;
    let mut t = [0.0; NUM_IOU];
    for (i, v) in t.iter_mut().enumerate() {
        *v = i as f64 * step + 0.5;
    }
    t[NUM_IOU - 1] = 0.95;
    t
}

/// `np.linspace(0, 1, 101)`, bit for bit.
pub fn recall_thresholds() -> [f64; NUM_REC] {
    let step = 1.0f64 / 100.0;
    let mut r = [0.0; NUM_REC];
    for (i, v) in r.iter_mut().enumerate() {
        *v = i as f64 * step;
    }
    r[NUM_REC - 1] = 1.0;
    r
}

/// pycocotools' `maskApi.c bbIou` for [x, y, w, h] boxes: continuous coordinates (no +1), and for a
/// crowd ground truth the union is the detection's own area, so a detection inside a crowd region
/// scores 1 however large the region is. Operation order follows the C code so results agree to
/// the bit.
#[inline]
pub fn bbox_iou(d: &[f64; 4], g: &[f64; 4], crowd: bool) -> f64 {
    let w = (d[2] + d[0]).min(g[2] + g[0]) - d[0].max(g[0]);
    if w <= 0.0 {
        return 0.0;
    }
    let h = (d[3] + d[1]).min(g[3] + g[1]) - d[1].max(g[1]);
    if h <= 0.0 {
        return 0.0;
    }
    let da = d[2] * d[3];
    let ga = g[2] * g[3];
    let i = w * h;
    let u = if crowd { da } else { da + ga - i };
    i / u
}

#[derive(Debug, Error, PartialEq)]
pub enum EvalError {
    #[error("detection {index} (0-based) refers to image_id {image_id}, which is not in the ground truth")]
    UnknownImage { index: usize, image_id: i64 },
    #[error("detection {index} (0-based) refers to category_id {category_id}, which is not in the ground truth")]
    UnknownCategory { index: usize, category_id: i64 },
    #[error("detection {index} (0-based) has a non-finite score or bbox")]
    NonFinite { index: usize },
}

/// Everything `COCOeval.accumulate` + `summarize` produce, plus per-category figures.
#[derive(Debug, Clone)]
pub struct CocoEval {
    /// The 12 numbers of `COCOeval.stats` (see [`STAT_NAMES`]); -1 where nothing is defined.
    pub stats: [f64; 12],
    /// Sorted category ids (index k of the arrays).
    pub category_ids: Vec<i64>,
    /// Non-crowd ground-truth annotations per category (all areas).
    pub num_gt: Vec<usize>,
    /// Detections per category in the results.
    pub num_dets: Vec<usize>,
    pub iou_thresholds: [f64; NUM_IOU],
    pub recall_thresholds: [f64; NUM_REC],
    /// `[T, R, K, A, M]`, row-major.
    pub precision: Vec<f64>,
    /// `[T, K, A, M]`, row-major.
    pub recall: Vec<f64>,
    /// Number of images evaluated.
    pub num_images: usize,
}

impl CocoEval {
    pub fn num_categories(&self) -> usize {
        self.category_ids.len()
    }
    /// precision[t][r][k][a][m]
    pub fn precision_at(&self, t: usize, r: usize, k: usize, a: usize, m: usize) -> f64 {
        let kk = self.num_categories();
        self.precision[(((t * NUM_REC + r) * kk + k) * NUM_AREA + a) * NUM_MAXDET + m]
    }
    /// recall[t][k][a][m]
    pub fn recall_at(&self, t: usize, k: usize, a: usize, m: usize) -> f64 {
        let kk = self.num_categories();
        self.recall[((t * kk + k) * NUM_AREA + a) * NUM_MAXDET + m]
    }

    /// A category's AP over IoU thresholds `ts` (area all, 100 detections), as detectron2 reports
    /// it: the mean of `precision[ts, :, k, 0, -1]`; `None` for a category without ground truth.
    pub fn category_ap(&self, k: usize, ts: std::ops::Range<usize>) -> Option<f64> {
        let vals: Vec<f64> = ts
            .flat_map(|t| (0..NUM_REC).map(move |r| (t, r)))
            .map(|(t, r)| self.precision_at(t, r, k, 0, NUM_MAXDET - 1))
            .filter(|&v| v > -1.0)
            .collect();
        (!vals.is_empty()).then(|| numpy_sum(&vals) / vals.len() as f64)
    }

    /// Per-category AP (IoU .50:.95), in `category_ids` order.
    pub fn per_category_ap(&self) -> Vec<Option<f64>> {
        (0..self.num_categories())
            .map(|k| self.category_ap(k, 0..NUM_IOU))
            .collect()
    }

    /// A precision-recall curve: precision at the 101 recall thresholds (area all, 100
    /// detections), averaged over the IoU thresholds `ts`, for category `k` (`None` if it has no
    /// ground truth).
    pub fn category_pr_curve(&self, k: usize, ts: std::ops::Range<usize>) -> Option<Vec<f64>> {
        if self.precision_at(0, 0, k, 0, NUM_MAXDET - 1) <= -1.0 || ts.is_empty() {
            return None;
        }
        let n = ts.len() as f64;
        Some(
            (0..NUM_REC)
                .map(|r| {
                    ts.clone()
                        .map(|t| self.precision_at(t, r, k, 0, NUM_MAXDET - 1))
                        .sum::<f64>()
                        / n
                })
                .collect(),
        )
    }

    /// The curve averaged over the categories with ground truth (the curve whose mean is AP for
    /// `ts` = all thresholds); `None` if no category has ground truth.
    pub fn mean_pr_curve(&self, ts: std::ops::Range<usize>) -> Option<Vec<f64>> {
        let curves: Vec<Vec<f64>> = (0..self.num_categories())
            .filter_map(|k| self.category_pr_curve(k, ts.clone()))
            .collect();
        if curves.is_empty() {
            return None;
        }
        let n = curves.len() as f64;
        Some(
            (0..NUM_REC)
                .map(|r| curves.iter().map(|c| c[r]).sum::<f64>() / n)
                .collect(),
        )
    }

    /// The 12 lines `COCOeval.summarize()` prints, character for character.
    pub fn summary_lines(&self) -> Vec<String> {
        let spec = summary_spec();
        spec.iter()
            .zip(self.stats)
            .map(|(s, v)| {
                let (title, kind) = if s.ap {
                    ("Average Precision", "(AP)")
                } else {
                    ("Average Recall", "(AR)")
                };
                let iou = match s.iou {
                    None => "0.50:0.95".to_string(),
                    Some(t) => format!("{t:.2}"),
                };
                format!(
                    " {:<18} {} @[ IoU={:<9} | area={:>6} | maxDets={:>3} ] = {:.3}",
                    title, kind, iou, AREA_LABELS[s.area], MAX_DETS[s.maxdet], v
                )
            })
            .collect()
    }
}

struct StatSpec {
    ap: bool,
    iou: Option<f64>,
    area: usize,
    maxdet: usize,
}

fn summary_spec() -> [StatSpec; 12] {
    let s = |ap, iou, area, maxdet| StatSpec {
        ap,
        iou,
        area,
        maxdet,
    };
    [
        s(true, None, 0, 2),
        s(true, Some(0.5), 0, 2),
        s(true, Some(0.75), 0, 2),
        s(true, None, 1, 2),
        s(true, None, 2, 2),
        s(true, None, 3, 2),
        s(false, None, 0, 0),
        s(false, None, 0, 1),
        s(false, None, 0, 2),
        s(false, None, 1, 2),
        s(false, None, 2, 2),
        s(false, None, 3, 2),
    ]
}

/// numpy's pairwise summation (`np.add.reduce` on a contiguous float64 array), so that means
/// agree with `np.mean` to the last bit rather than to rounding noise.
pub fn numpy_sum(a: &[f64]) -> f64 {
    fn pairwise(a: &[f64]) -> f64 {
        let n = a.len();
        if n < 8 {
            let mut res = 0.0;
            for &v in a {
                res += v;
            }
            res
        } else if n <= 128 {
            let mut r = [0.0f64; 8];
            r.copy_from_slice(&a[..8]);
            let mut i = 8;
            while i < n - (n % 8) {
                for j in 0..8 {
                    r[j] += a[i + j];
                }
                i += 8;
            }
            let mut res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
            while i < n {
                res += a[i];
                i += 1;
            }
            res
        } else {
            let mut n2 = n / 2;
            n2 -= n2 % 8;
            pairwise(&a[..n2]) + pairwise(&a[n2..])
        }
    }
    pairwise(a)
}

/// pycocotools' summarize: the mean of the entries > -1, or -1 if there are none.
fn mean_valid(vals: &mut Vec<f64>) -> f64 {
    vals.retain(|&v| v > -1.0);
    if vals.is_empty() {
        -1.0
    } else {
        numpy_sum(vals) / vals.len() as f64
    }
}

/// Ground truth as evaluation sees it.
#[derive(Clone, Copy)]
struct Gt {
    bbox: [f64; 4],
    area: f64,
    crowd: bool,
    /// pycocotools records a match by storing the GT id and tests it for truth, so a match to a GT
    /// whose id is 0 counts as no match (a false positive). Reproduced deliberately.
    id_nonzero: bool,
}

/// A (category, image) pair with ground truth or detections.
struct Unit {
    k: u32,
    gts: std::ops::Range<usize>,
    dts: std::ops::Range<usize>,
    /// Start of this unit's (at most 100) detections in the flat per-detection outputs.
    out: usize,
}

/// Per-detection output of matching: for each area range, bits 0..10 = true positive at IoU
/// threshold t, bits 16..26 = false positive (neither bit = ignored).
type Flags = [u32; NUM_AREA];

#[derive(Default)]
struct Scratch {
    order: Vec<u32>,
    ious: Vec<f64>,
    gt_order: Vec<u32>,
    gt_ignore: Vec<bool>,
    gt_matched: Vec<bool>,
}

/// Evaluates `dets` against `gt` exactly as pycocotools' COCOeval (iouType 'bbox', default
/// parameters, all images and categories of `gt`) does after `COCO.loadRes(dets)`.
///
/// Empty `dets` is allowed (pycocotools' loadRes would raise IndexError on it; COCOeval itself,
/// given an empty result set, scores every category with ground truth 0, and so does this).
pub fn evaluate(gt: &CocoDataset, dets: &[Detection]) -> Result<CocoEval, EvalError> {
    let index = Index::build(gt, dets)?;
    let (units, total_out) = units(&index.gt_keys, &index.dt_keys);
    let matched = match_units(&units, &index, total_out);
    let rec_thr = recall_thresholds();
    let (precision, recall) = accumulate(&units, &matched, index.category_ids.len(), &rec_thr);
    let mut ev = CocoEval {
        stats: [0.0; 12],
        num_images: index.image_ids.len(),
        category_ids: index.category_ids,
        num_gt: index.num_gt,
        num_dets: index.num_dets,
        iou_thresholds: iou_thresholds(),
        recall_thresholds: rec_thr,
        precision,
        recall,
    };
    ev.stats = summarize(&ev);
    Ok(ev)
}

/// The ground truth and detections indexed as pycocotools indexes them: sorted unique image and
/// category ids, and both lists sorted by (category, image) keys.
struct Index {
    image_ids: Vec<i64>,
    category_ids: Vec<i64>,
    /// Ground truth in key order, with the sorted keys `(category << 32) | image`.
    gts: Vec<Gt>,
    gt_keys: Vec<u64>,
    /// Detections in key order (file order within a key), with their sorted keys.
    dts: Vec<Detection>,
    dt_keys: Vec<u64>,
    /// Per category: non-crowd ground truth and detections.
    num_gt: Vec<usize>,
    num_dets: Vec<usize>,
}

impl Index {
    fn build(gt: &CocoDataset, dets: &[Detection]) -> Result<Index, EvalError> {
        // pycocotools: imgIds and catIds are sorted unique ids of the ground truth.
        let mut image_ids: Vec<i64> = gt.images.iter().map(|i| i.id).collect();
        image_ids.sort_unstable();
        image_ids.dedup();
        let mut category_ids: Vec<i64> = gt.categories.iter().map(|c| c.id).collect();
        category_ids.sort_unstable();
        category_ids.dedup();
        let img_index: HashMap<i64, u32> = image_ids
            .iter()
            .enumerate()
            .map(|(i, &id)| (id, i as u32))
            .collect();
        let cat_index: HashMap<i64, u32> = category_ids
            .iter()
            .enumerate()
            .map(|(i, &id)| (id, i as u32))
            .collect();
        let nk = category_ids.len();

        // Sort keys (category, image); a stable sort keeps file order inside each unit, which is
        // the order pycocotools' index gives (and the tie order of equal scores).
        let mut gt_keys = Vec::with_capacity(gt.annotations.len());
        for a in &gt.annotations {
            // CocoDataset::validate guarantees these exist.
            if let (Some(&k), Some(&i)) =
                (cat_index.get(&a.category_id), img_index.get(&a.image_id))
            {
                gt_keys.push(((k as u64) << 32) | i as u64);
            }
        }
        let mut gt_sorted: Vec<u32> = (0..gt_keys.len() as u32).collect();
        gt_sorted.sort_by_key(|&j| gt_keys[j as usize]);
        let gts: Vec<Gt> = gt_sorted
            .iter()
            .map(|&j| {
                let a = &gt.annotations[j as usize];
                Gt {
                    bbox: a.bbox,
                    area: a.area,
                    crowd: a.iscrowd != 0,
                    id_nonzero: a.id != 0,
                }
            })
            .collect();
        gt_keys.sort_unstable();

        let mut dt_keys = Vec::with_capacity(dets.len());
        let mut num_dets = vec![0usize; nk];
        for (index, d) in dets.iter().enumerate() {
            let i = *img_index.get(&d.image_id).ok_or(EvalError::UnknownImage {
                index,
                image_id: d.image_id,
            })?;
            let k = *cat_index
                .get(&d.category_id)
                .ok_or(EvalError::UnknownCategory {
                    index,
                    category_id: d.category_id,
                })?;
            if !d.score.is_finite() || d.bbox.iter().any(|v| !v.is_finite()) {
                return Err(EvalError::NonFinite { index });
            }
            num_dets[k as usize] += 1;
            dt_keys.push(((k as u64) << 32) | i as u64);
        }
        let mut dt_sorted: Vec<u32> = (0..dt_keys.len() as u32).collect();
        dt_sorted.sort_by_key(|&j| dt_keys[j as usize]);
        let dts: Vec<Detection> = dt_sorted.iter().map(|&j| dets[j as usize]).collect();
        dt_keys.sort_unstable();

        let mut num_gt = vec![0usize; nk];
        for (g, key) in gts.iter().zip(&gt_keys) {
            if !g.crowd {
                num_gt[(key >> 32) as usize] += 1;
            }
        }
        Ok(Index {
            image_ids,
            category_ids,
            gts,
            gt_keys,
            dts,
            dt_keys,
            num_gt,
            num_dets,
        })
    }
}

/// Merges the two sorted key lists into (category, image) units, each with its slice of the
/// outputs (at most 100 detections); returns them in key order with the outputs' total length.
fn units(gt_keys: &[u64], dt_keys: &[u64]) -> (Vec<Unit>, usize) {
    let mut units = Vec::new();
    let (mut gi, mut di, mut out) = (0usize, 0usize, 0usize);
    while gi < gt_keys.len() || di < dt_keys.len() {
        let key = match (gt_keys.get(gi), dt_keys.get(di)) {
            (Some(&a), Some(&b)) => a.min(b),
            (Some(&a), None) => a,
            (None, Some(&b)) => b,
            (None, None) => unreachable!(),
        };
        let g0 = gi;
        while gi < gt_keys.len() && gt_keys[gi] == key {
            gi += 1;
        }
        let d0 = di;
        while di < dt_keys.len() && dt_keys[di] == key {
            di += 1;
        }
        units.push(Unit {
            k: (key >> 32) as u32,
            gts: g0..gi,
            dts: d0..di,
            out,
        });
        out += (di - d0).min(MAX_DETS[NUM_MAXDET - 1]);
    }
    (units, out)
}

/// What matching gives, per output (detection kept in a unit, in score order) and per unit.
struct Matched {
    score: Vec<f64>,
    flags: Vec<Flags>,
    pos: Vec<u8>,
    /// Per unit and area range: ground truth not ignored.
    unit_npig: Vec<[u32; NUM_AREA]>,
}

/// Matches every unit, in parallel; each unit writes its own disjoint slice of the outputs.
fn match_units(units: &[Unit], index: &Index, total_out: usize) -> Matched {
    let mut m = Matched {
        score: vec![0.0f64; total_out],
        flags: vec![[0; NUM_AREA]; total_out],
        pos: vec![0u8; total_out],
        unit_npig: vec![[0; NUM_AREA]; units.len()],
    };
    let mut jobs = Vec::with_capacity(units.len());
    let (mut s_rest, mut f_rest, mut p_rest) = (
        m.score.as_mut_slice(),
        m.flags.as_mut_slice(),
        m.pos.as_mut_slice(),
    );
    for (u, npig) in units.iter().zip(m.unit_npig.iter_mut()) {
        let n = u.dts.len().min(MAX_DETS[NUM_MAXDET - 1]);
        let (s, sr) = std::mem::take(&mut s_rest).split_at_mut(n);
        let (f, fr) = std::mem::take(&mut f_rest).split_at_mut(n);
        let (p, pr) = std::mem::take(&mut p_rest).split_at_mut(n);
        (s_rest, f_rest, p_rest) = (sr, fr, pr);
        jobs.push((u, npig, s, f, p));
    }
    let thr = iou_thresholds();
    jobs.into_par_iter()
        .for_each_init(Scratch::default, |sc, (u, npig, s, f, p)| {
            match_unit(
                &index.gts[u.gts.clone()],
                &index.dts[u.dts.clone()],
                &thr,
                sc,
                npig,
                s,
                f,
                p,
            )
        });
    m
}

/// Accumulates precision `[T, R, K, A, M]` and recall `[T, K, A, M]` (-1 where a category has no
/// ground truth), in parallel over categories. Units are sorted by category, so each category owns
/// a contiguous run of units and of outputs.
fn accumulate(
    units: &[Unit],
    matched: &Matched,
    nk: usize,
    rec_thr: &[f64; NUM_REC],
) -> (Vec<f64>, Vec<f64>) {
    let total_out = matched.score.len();
    let mut cat_units = vec![0..0; nk];
    let mut i = 0;
    while i < units.len() {
        let k = units[i].k as usize;
        let j0 = i;
        while i < units.len() && units[i].k as usize == k {
            i += 1;
        }
        cat_units[k] = j0..i;
    }
    let per_cat: Vec<Option<CatAcc>> = cat_units
        .par_iter()
        .map(|ur| {
            if ur.is_empty() {
                return None;
            }
            let o0 = units[ur.start].out;
            let o1 = units.get(ur.end).map_or(total_out, |u| u.out);
            let mut npig = [0u32; NUM_AREA];
            for n in &matched.unit_npig[ur.clone()] {
                for a in 0..NUM_AREA {
                    npig[a] += n[a];
                }
            }
            Some(accumulate_category(
                &matched.score[o0..o1],
                &matched.flags[o0..o1],
                &matched.pos[o0..o1],
                npig,
                rec_thr,
            ))
        })
        .collect();

    let mut precision = vec![-1.0f64; NUM_IOU * NUM_REC * nk * NUM_AREA * NUM_MAXDET];
    let mut recall = vec![-1.0f64; NUM_IOU * nk * NUM_AREA * NUM_MAXDET];
    for (k, acc) in per_cat.iter().enumerate() {
        let Some(acc) = acc else { continue };
        for t in 0..NUM_IOU {
            for a in 0..NUM_AREA {
                for m in 0..NUM_MAXDET {
                    recall[((t * nk + k) * NUM_AREA + a) * NUM_MAXDET + m] =
                        acc.recall[(t * NUM_AREA + a) * NUM_MAXDET + m];
                    for r in 0..NUM_REC {
                        precision[(((t * NUM_REC + r) * nk + k) * NUM_AREA + a) * NUM_MAXDET + m] =
                            acc.precision[((t * NUM_REC + r) * NUM_AREA + a) * NUM_MAXDET + m];
                    }
                }
            }
        }
    }
    (precision, recall)
}

/// pycocotools `evaluateImg` for one (image, category), all four area ranges and all IoU
/// thresholds at once. `dts` is in file order; outputs are in score order (at most 100).
#[allow(clippy::too_many_arguments)]
fn match_unit(
    gts: &[Gt],
    dts: &[Detection],
    thr: &[f64; NUM_IOU],
    sc: &mut Scratch,
    npig: &mut [u32; NUM_AREA],
    out_score: &mut [f64],
    out_flags: &mut [Flags],
    out_pos: &mut [u8],
) {
    // pycocotools: stable sort by descending score (mergesort on -score), then keep 100.
    sc.order.clear();
    sc.order.extend(0..dts.len() as u32);
    sc.order.sort_by(|&a, &b| {
        dts[b as usize]
            .score
            .partial_cmp(&dts[a as usize].score)
            .unwrap_or(std::cmp::Ordering::Equal)
    });
    let nd = out_score.len();
    sc.order.truncate(nd);
    let ng = gts.len();
    for (j, &o) in sc.order.iter().enumerate() {
        out_score[j] = dts[o as usize].score;
        out_pos[j] = j as u8;
    }
    // ious[d * ng + g], g in file order.
    sc.ious.clear();
    for &o in &sc.order {
        let d = &dts[o as usize];
        for g in gts {
            sc.ious.push(bbox_iou(&d.bbox, &g.bbox, g.crowd));
        }
    }
    for a in 0..NUM_AREA {
        let [lo, hi] = AREA_RANGES[a];
        // pycocotools: a GT is ignored if crowd or if its `area` field is outside [lo, hi];
        // GTs are stable-sorted with the ignored ones last.
        sc.gt_ignore.clear();
        sc.gt_ignore
            .extend(gts.iter().map(|g| g.crowd || g.area < lo || g.area > hi));
        sc.gt_order.clear();
        sc.gt_order
            .extend((0..ng as u32).filter(|&g| !sc.gt_ignore[g as usize]));
        npig[a] = sc.gt_order.len() as u32;
        sc.gt_order
            .extend((0..ng as u32).filter(|&g| sc.gt_ignore[g as usize]));
        for f in out_flags.iter_mut() {
            f[a] = 0;
        }
        for (t, &th) in thr.iter().enumerate() {
            sc.gt_matched.clear();
            sc.gt_matched.resize(ng, false);
            for (d, flag) in out_flags.iter_mut().enumerate() {
                let mut best = th.min(1.0 - 1e-10);
                let mut m: Option<usize> = None; // index into gt_order
                if ng > 0 {
                    let row = &sc.ious[d * ng..(d + 1) * ng];
                    for (gi, &g) in sc.gt_order.iter().enumerate() {
                        let g = g as usize;
                        if sc.gt_matched[gi] && !gts[g].crowd {
                            continue;
                        }
                        // Once matched to a regular GT, stop at the first ignored one.
                        if let Some(mi) = m {
                            if !sc.gt_ignore[sc.gt_order[mi] as usize] && sc.gt_ignore[g] {
                                break;
                            }
                        }
                        if row[g] < best {
                            continue;
                        }
                        best = row[g];
                        m = Some(gi);
                    }
                }
                let det = &dts[sc.order[d] as usize];
                let out_of_range = {
                    let ar = det.area();
                    ar < lo || ar > hi
                };
                let (matched, ignored) = match m {
                    Some(mi) => {
                        sc.gt_matched[mi] = true;
                        let g = sc.gt_order[mi] as usize;
                        let matched = gts[g].id_nonzero;
                        (matched, sc.gt_ignore[g] || (!matched && out_of_range))
                    }
                    // pycocotools: unmatched detections outside the area range are ignored.
                    None => (false, out_of_range),
                };
                if !ignored {
                    flag[a] |= if matched { 1 << t } else { 1 << (16 + t) };
                }
            }
        }
    }
}

/// One category's accumulated arrays: precision `[T, R, A, M]`, recall `[T, A, M]`.
struct CatAcc {
    precision: Vec<f64>,
    recall: Vec<f64>,
}

/// pycocotools `accumulate` for one category. Inputs are the category's per-unit outputs in
/// (image id, score rank) order.
fn accumulate_category(
    scores: &[f64],
    flags: &[Flags],
    pos: &[u8],
    npig: [u32; NUM_AREA],
    rec_thr: &[f64; NUM_REC],
) -> CatAcc {
    // pycocotools: one mergesort on -score over the concatenation in image-id order, so ties
    // keep image order, then rank order. Restricting to rank < maxDet commutes with a stable sort.
    let mut order: Vec<u32> = (0..scores.len() as u32).collect();
    order.sort_by(|&a, &b| {
        scores[b as usize]
            .partial_cmp(&scores[a as usize])
            .unwrap_or(std::cmp::Ordering::Equal)
    });
    let mut precision = vec![-1.0; NUM_IOU * NUM_REC * NUM_AREA * NUM_MAXDET];
    let mut recall = vec![-1.0; NUM_IOU * NUM_AREA * NUM_MAXDET];
    let mut sel: Vec<u32> = Vec::with_capacity(order.len());
    let mut rc = Vec::with_capacity(order.len());
    let mut pr = Vec::with_capacity(order.len());
    for (m, &max_det) in MAX_DETS.iter().enumerate() {
        sel.clear();
        sel.extend(
            order
                .iter()
                .copied()
                .filter(|&i| (pos[i as usize] as usize) < max_det),
        );
        for a in 0..NUM_AREA {
            // pycocotools: no non-ignored GT -> the category is skipped (stays -1).
            if npig[a] == 0 {
                continue;
            }
            let npig_f = npig[a] as f64;
            for t in 0..NUM_IOU {
                rc.clear();
                pr.clear();
                let (mut tp, mut fp) = (0u64, 0u64);
                // Ignored detections are skipped: in pycocotools they repeat the previous
                // (rc, pr) pair (or (0, 0) before the first counted one), which changes neither
                // the envelope nor which value searchsorted picks, nor rc[-1]; so the result is
                // bit-identical and the passes for the small/medium/large ranges get shorter.
                for &i in &sel {
                    let f = flags[i as usize][a];
                    let (is_tp, is_fp) = ((f >> t) & 1, (f >> (16 + t)) & 1);
                    if is_tp | is_fp == 0 {
                        continue;
                    }
                    tp += is_tp as u64;
                    fp += is_fp as u64;
                    let (tpf, fpf) = (tp as f64, fp as f64);
                    rc.push(tpf / npig_f);
                    pr.push(tpf / (fpf + tpf + f64::EPSILON));
                }
                let nd = rc.len();
                recall[(t * NUM_AREA + a) * NUM_MAXDET + m] = rc.last().copied().unwrap_or(0.0);
                // The precision envelope: make precision non-increasing from the right.
                for i in (1..nd).rev() {
                    if pr[i] > pr[i - 1] {
                        pr[i - 1] = pr[i];
                    }
                }
                // q[r] = pr[first i with rc[i] >= rec_thr[r]] (searchsorted 'left'), or 0 when
                // the recall threshold is never reached.
                let mut i = 0usize;
                for (r, &thr) in rec_thr.iter().enumerate() {
                    while i < nd && rc[i] < thr {
                        i += 1;
                    }
                    precision[((t * NUM_REC + r) * NUM_AREA + a) * NUM_MAXDET + m] =
                        if i < nd { pr[i] } else { 0.0 };
                }
            }
        }
    }
    CatAcc { precision, recall }
}

fn summarize(ev: &CocoEval) -> [f64; 12] {
    let nk = ev.num_categories();
    let mut stats = [0.0; 12];
    let mut vals = Vec::new();
    for (s, out) in summary_spec().iter().zip(stats.iter_mut()) {
        // pycocotools selects t by `iouThr == p.iouThrs` (exact comparison).
        let ts: Vec<usize> = match s.iou {
            None => (0..NUM_IOU).collect(),
            Some(v) => (0..NUM_IOU)
                .filter(|&t| ev.iou_thresholds[t] == v)
                .collect(),
        };
        vals.clear();
        // Row-major order of the selected sub-array, as numpy's boolean mask flattens it.
        for &t in &ts {
            if s.ap {
                for r in 0..NUM_REC {
                    for k in 0..nk {
                        vals.push(ev.precision_at(t, r, k, s.area, s.maxdet));
                    }
                }
            } else {
                for k in 0..nk {
                    vals.push(ev.recall_at(t, k, s.area, s.maxdet));
                }
            }
        }
        *out = mean_valid(&mut vals);
    }
    stats
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::coco::{CocoAnnotation, CocoCategory, CocoImage};

    #[test]
    fn thresholds_match_numpy_linspace_bits() {
        // float.hex() of np.linspace(.5, .95, 10)
        let hex = [
            0x3fe0000000000000u64,
            0x3fe199999999999a,
            0x3fe3333333333333,
            0x3fe4cccccccccccd,
            0x3fe6666666666666,
            0x3fe8000000000000,
            0x3fe999999999999a,
            0x3feb333333333333,
            0x3feccccccccccccc,
            0x3fee666666666666,
        ];
        let t = iou_thresholds();
        for i in 0..NUM_IOU {
            assert_eq!(t[i].to_bits(), hex[i], "threshold {i}");
        }
        assert_eq!(t[5], 0.75);
        let r = recall_thresholds();
        assert_eq!(r[57], 0.5700000000000001);
        assert_eq!(r[58], 0.58);
        assert_eq!(r[100], 1.0);
    }

    #[test]
    fn iou_closed_forms_and_crowd() {
        let g = [0.0, 0.0, 10.0, 10.0];
        // Half overlap: i = 50, u = 150.
        assert_eq!(bbox_iou(&[5.0, 0.0, 10.0, 10.0], &g, false), 50.0 / 150.0);
        // Touching edges (continuous coordinates, no +1) do not overlap.
        assert_eq!(bbox_iou(&[10.0, 0.0, 5.0, 5.0], &g, false), 0.0);
        assert_eq!(bbox_iou(&g, &g, false), 1.0);
        // Crowd: the union is the detection's area, so a detection inside the region scores 1
        // and one half outside scores 1/2, however large the region.
        let crowd = [0.0, 0.0, 100.0, 100.0];
        assert_eq!(bbox_iou(&[10.0, 10.0, 5.0, 5.0], &crowd, true), 1.0);
        assert_eq!(bbox_iou(&[95.0, 10.0, 10.0, 4.0], &crowd, true), 0.5);
        assert_eq!(
            bbox_iou(&[10.0, 10.0, 5.0, 5.0], &crowd, false),
            25.0 / 10000.0
        );
    }

    #[test]
    fn numpy_sum_matches_np_add_reduce_bits() {
        // Expected values: np.add.reduce(v) for v = 1/(i+1) * (1 + (i % 7) * 1e-3), i < n.
        for (n, want) in [
            (1000usize, 7.504037387951868f64),
            (20000, 10.508279569706868),
            (100000, 12.12252567607367),
        ] {
            let v: Vec<f64> = (0..n)
                .map(|i| 1.0 / (i as f64 + 1.0) * (1.0 + (i % 7) as f64 * 1e-3))
                .collect();
            assert_eq!(numpy_sum(&v), want, "n = {n}");
        }
        assert_eq!(numpy_sum(&[1.0, 2.0, 3.0]), 6.0);
        assert_eq!(numpy_sum(&[]), 0.0);
    }

    fn dataset(gts: &[([f64; 4], f64, u8)]) -> CocoDataset {
        CocoDataset {
            info: None,
            images: vec![
                CocoImage {
                    id: 1,
                    file_name: "a".into(),
                    width: 100,
                    height: 100,
                },
                CocoImage {
                    id: 2,
                    file_name: "b".into(),
                    width: 100,
                    height: 100,
                },
            ],
            annotations: gts
                .iter()
                .enumerate()
                .map(|(i, &(bbox, area, iscrowd))| CocoAnnotation {
                    id: i as i64 + 1,
                    image_id: 1,
                    category_id: 1,
                    bbox,
                    area,
                    iscrowd,
                })
                .collect(),
            categories: vec![
                CocoCategory {
                    id: 1,
                    name: "x".into(),
                    supercategory: None,
                },
                CocoCategory {
                    id: 2,
                    name: "y".into(),
                    supercategory: None,
                },
            ],
        }
    }

    fn det(bbox: [f64; 4], score: f64) -> Detection {
        Detection {
            image_id: 1,
            category_id: 1,
            bbox,
            score,
        }
    }

    #[test]
    fn envelope_and_101_point_interpolation_by_hand() {
        // 4 GT; detections in score order: TP, FP, TP, FP, TP (IoU 1 or 0 at every threshold).
        // cumulative: tp 1 1 2 2 3, fp 0 1 1 2 2; rc = .25 .25 .5 .5 .75;
        // pr = 1, .5, .667, .5, .6 -> envelope 1, .667, .667, .6, .6.
        // Recall thresholds 0..=.25 -> 1 (26 points), .26..=.5 -> 2/3 (25), .51..=.75 -> .6
        // (25), .76..=1 -> 0 (25, beyond the maximum recall).
        let g = |x: f64| [x, 0.0, 10.0, 10.0];
        let ds = dataset(&[
            (g(0.0), 100.0, 0),
            (g(20.0), 100.0, 0),
            (g(40.0), 100.0, 0),
            (g(60.0), 100.0, 0),
        ]);
        let miss = [0.0, 50.0, 10.0, 10.0];
        let dets = [
            det(g(0.0), 0.9),
            det(miss, 0.8),
            det(g(20.0), 0.7),
            det(miss, 0.6),
            det(g(40.0), 0.5),
        ];
        let ev = evaluate(&ds, &dets).unwrap();
        let eps = f64::EPSILON;
        let p2 = 2.0 / (3.0 + eps);
        let p3 = 3.0 / (5.0 + eps);
        for t in 0..NUM_IOU {
            for r in 0..NUM_REC {
                let want = if r <= 25 {
                    1.0 / (1.0 + eps)
                } else if r <= 50 {
                    p2
                } else if r <= 75 {
                    p3
                } else {
                    0.0
                };
                assert_eq!(ev.precision_at(t, r, 0, 0, 2), want, "t {t} r {r}");
            }
            assert_eq!(ev.recall_at(t, 0, 0, 2), 0.75);
            // maxDets 1: only the first detection of the image counts.
            assert_eq!(ev.recall_at(t, 0, 0, 0), 0.25);
        }
        let want_ap = (26.0 / (1.0 + eps) + 25.0 * p2 + 25.0 * p3) / 101.0;
        assert!((ev.stats[0] - want_ap).abs() < 1e-15);
        // Category 2 has no GT: excluded (-1), so the mean is category 1 alone.
        assert_eq!(ev.precision_at(0, 0, 1, 0, 2), -1.0);
        assert_eq!(ev.category_ap(1, 0..NUM_IOU), None);
        // All GT are 100 px^2: small only; medium and large have no GT -> -1.
        assert_eq!(ev.stats[4], -1.0);
        assert_eq!(ev.stats[5], -1.0);
        assert!((ev.stats[3] - want_ap).abs() < 1e-15);
    }

    #[test]
    fn crowd_absorbs_detections_and_is_ignored() {
        // One regular GT and one crowd region; three detections inside the crowd region and one
        // on the regular GT. The crowd matches are ignored (neither TP nor FP): AP = 1.
        let ds = dataset(&[
            ([0.0, 0.0, 10.0, 10.0], 100.0, 0),
            ([50.0, 50.0, 50.0, 50.0], 2500.0, 1),
        ]);
        let dets = [
            det([55.0, 55.0, 5.0, 5.0], 0.95),
            det([60.0, 60.0, 5.0, 5.0], 0.9),
            det([0.0, 0.0, 10.0, 10.0], 0.8),
            det([70.0, 70.0, 5.0, 5.0], 0.7),
        ];
        let ev = evaluate(&ds, &dets).unwrap();
        assert!((ev.stats[0] - 1.0 / (1.0 + f64::EPSILON)).abs() < 1e-15);
        assert_eq!(ev.num_gt[0], 1);
    }

    #[test]
    fn category_with_gt_and_no_detections_counts_zero() {
        let mut ds = dataset(&[([0.0, 0.0, 10.0, 10.0], 100.0, 0)]);
        ds.annotations.push(CocoAnnotation {
            id: 9,
            image_id: 2,
            category_id: 2,
            bbox: [0.0, 0.0, 10.0, 10.0],
            area: 100.0,
            iscrowd: 0,
        });
        let ev = evaluate(&ds, &[det([0.0, 0.0, 10.0, 10.0], 0.5)]).unwrap();
        assert_eq!(ev.category_ap(1, 0..NUM_IOU), Some(0.0));
        assert!((ev.stats[0] - 0.5 / (1.0 + f64::EPSILON)).abs() < 1e-15);
        // Empty results: every category with GT scores 0.
        let ev = evaluate(&ds, &[]).unwrap();
        assert_eq!(ev.stats[0], 0.0);
        assert_eq!(ev.stats[8], 0.0);
    }

    #[test]
    fn unknown_ids_are_errors() {
        let ds = dataset(&[]);
        let mut d = det([0.0, 0.0, 1.0, 1.0], 0.5);
        d.image_id = 7;
        assert_eq!(
            evaluate(&ds, &[d]).unwrap_err(),
            EvalError::UnknownImage {
                index: 0,
                image_id: 7
            }
        );
        d.image_id = 1;
        d.category_id = 3;
        assert!(matches!(
            evaluate(&ds, &[d]),
            Err(EvalError::UnknownCategory { .. })
        ));
    }
}
