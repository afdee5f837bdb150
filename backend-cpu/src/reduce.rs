//! Reductions (sum, mean, max, min) over any subset of axes.
//!
//! Every case becomes a block form `[A, R, B]` of a row-major buffer:
//! reduce the middle axis, keep the outer `A` and the inner `B`. Reduced
//! axes that are already one contiguous run of a standard-layout input are
//! used in place; otherwise the input is permuted (kept axes first) and
//! copied once, giving `B = 1`.

use ndarray::{ArrayD, ArrayViewD, IxDyn};
use rayon::prelude::*;
use tensorgraph_core::{ReduceOp, Shape};

use crate::element::{Element, KResult, PAR_THRESHOLD, TypedKernel};
use crate::layout::owned;
use crate::pool::{Alloc, Pooled};

/// Elements of one lane summed per parallel task when a single long lane
/// is split.
const LANE_CHUNK: usize = 16 * 1024;
/// Rows accumulated sequentially before partial results are combined
/// pairwise; bounds the float error of column sums.
pub(crate) const ROW_BLOCK: usize = 64;
/// Columns per parallel task in column reductions.
pub(crate) const COL_CHUNK: usize = 2 * 1024;

/// A reduction over sorted, distinct axes.
pub(crate) struct Reduce<'a> {
    /// Which reduction.
    pub(crate) op: ReduceOp,
    /// Axes reduced, sorted ascending.
    pub(crate) axes: &'a [usize],
    /// The output shape (with or without the kept unit axes).
    pub(crate) shape: &'a Shape,
}

impl TypedKernel for Reduce<'_> {
    fn run<T: Pooled>(
        &self,
        inputs: &[ArrayViewD<'_, T>],
        alloc: Alloc<'_>,
    ) -> KResult<Vec<ArrayD<T>>> {
        let [x] = inputs else {
            return Err(format!(
                "{} takes 1 operand, got {}",
                self.op.name(),
                inputs.len()
            ));
        };
        let dims = x.shape();
        if self.axes.iter().any(|&a| a >= dims.len()) || self.axes.windows(2).any(|w| w[0] >= w[1])
        {
            return Err(format!("bad axes {:?} for shape {dims:?}", self.axes));
        }
        let count: usize = self.axes.iter().map(|&a| dims[a]).product();
        if count == 0 && matches!(self.op, ReduceOp::Max | ReduceOp::Min) {
            return Err(format!("{} over an empty axis of {dims:?}", self.op.name()));
        }
        let results = x.len().checked_div(count).unwrap_or(self.shape.numel());
        if results != self.shape.numel() {
            return Err(format!(
                "{} over {:?} of {dims:?} into {}",
                self.op.name(),
                self.axes,
                self.shape
            ));
        }
        let mut out = alloc.vec::<T>(results);
        let contiguous = self.axes.windows(2).all(|w| w[1] == w[0] + 1);
        match (self.axes.first(), self.axes.last(), x.as_slice()) {
            // No elements reduced: the identity (0), or NaN for a float mean.
            _ if count == 0 => out.fill(finish(self.op, T::default(), 0)),
            (Some(&first), Some(&last), Some(s)) if contiguous => {
                let outer = dims[..first].iter().product();
                let inner = dims[last + 1..].iter().product();
                reduce_block(self.op, s, outer, count, inner, &mut out)?;
            }
            _ => {
                // Kept axes first, copied row-major (in tiles when that is
                // a transpose) into scratch the pool gets back.
                let kept = (0..dims.len()).filter(|a| !self.axes.contains(a));
                let perm: Vec<usize> = kept.chain(self.axes.iter().copied()).collect();
                let moved = x.view().permuted_axes(IxDyn(&perm));
                if let Some(s) = moved.as_slice() {
                    // Already row-major (the moved axes are of length 1).
                    reduce_block(self.op, s, results, count, 1, &mut out)?;
                } else {
                    let copy = owned(moved, alloc)?;
                    let s = copy.as_slice().ok_or("standard layout is not contiguous")?;
                    let done = reduce_block(self.op, s, results, count, 1, &mut out);
                    alloc.recycle(T::into_value(copy));
                    done?;
                }
            }
        }
        Ok(vec![
            ArrayD::from_shape_vec(IxDyn(self.shape.dims()), out).map_err(|e| e.to_string())?,
        ])
    }
}

/// Combines two partial results.
pub(crate) fn combine<T: Element>(op: ReduceOp, a: T, b: T) -> T {
    match op {
        ReduceOp::Sum | ReduceOp::Mean => T::add(a, b),
        ReduceOp::Max => T::max2(a, b),
        ReduceOp::Min => T::min2(a, b),
    }
}

/// Reduces one non-empty lane to a partial result (a sum for `Mean`).
pub(crate) fn lane<T: Element>(op: ReduceOp, xs: &[T]) -> T {
    match op {
        ReduceOp::Sum | ReduceOp::Mean => T::sum(xs),
        ReduceOp::Max => xs.iter().copied().reduce(T::max2).unwrap_or_default(),
        ReduceOp::Min => xs.iter().copied().reduce(T::min2).unwrap_or_default(),
    }
}

/// Turns a partial result over `count` elements into the answer.
pub(crate) fn finish<T: Element>(op: ReduceOp, v: T, count: usize) -> T {
    match op {
        ReduceOp::Mean => T::mean(v, count),
        ReduceOp::Sum | ReduceOp::Max | ReduceOp::Min => v,
    }
}

/// Reduces the middle axis of the row-major block `[outer, r, inner]` in
/// `s` (`r` at least 1) into the `outer * inner` elements of `out`.
fn reduce_block<T: Element>(
    op: ReduceOp,
    s: &[T],
    outer: usize,
    r: usize,
    inner: usize,
    out: &mut [T],
) -> KResult<()> {
    if r == 0 || s.len() < outer * r * inner || out.len() != outer * inner {
        return Err(format!(
            "{} of {} elements as [{outer}, {r}, {inner}] into {}",
            op.name(),
            s.len(),
            out.len()
        ));
    }
    if out.is_empty() {
        return Ok(());
    }
    let big = outer * r * inner >= PAR_THRESHOLD;
    let lanes = s[..outer * r].chunks(r);
    if inner == 1 {
        let threads = rayon::current_num_threads();
        if !big {
            for (o, l) in out.iter_mut().zip(lanes) {
                *o = finish(op, lane(op, l), r);
            }
        } else if outer >= 2 * threads {
            out.par_iter_mut()
                .zip(s[..outer * r].par_chunks(r))
                .with_min_len((PAR_THRESHOLD / r).max(1))
                .for_each(|(o, l)| *o = finish(op, lane(op, l), r));
        } else {
            // Few long lanes: split each lane across the pool.
            for (o, l) in out.iter_mut().zip(lanes) {
                *o = finish(op, split_lane(op, l), r);
            }
        }
    } else {
        let block = r * inner;
        let one = |(ai, o): (usize, &mut [T])| {
            let rows = &s[ai * block..(ai + 1) * block];
            if big {
                o.par_chunks_mut(COL_CHUNK)
                    .enumerate()
                    .for_each(|(ci, oc)| columns(op, rows, inner, ci * COL_CHUNK, oc));
            } else {
                columns(op, rows, inner, 0, o);
            }
        };
        if big {
            out.par_chunks_mut(inner).enumerate().for_each(one);
        } else {
            out.chunks_mut(inner).enumerate().for_each(one);
        }
        for v in out.iter_mut() {
            *v = finish(op, *v, r);
        }
    }
    Ok(())
}

/// One long lane reduced in parallel chunks, partials combined pairwise.
fn split_lane<T: Element>(op: ReduceOp, xs: &[T]) -> T {
    let partials: Vec<T> = xs.par_chunks(LANE_CHUNK).map(|c| lane(op, c)).collect();
    lane(op, &partials)
}

/// Reduces columns `c0 .. c0 + out.len()` of the row-major `[rows, width]`
/// matrix `m` into `out`: blocks of [`ROW_BLOCK`] rows are accumulated in
/// order, and the block results combined as a balanced tree. Long columns
/// compute their blocks in parallel.
fn columns<T: Element>(op: ReduceOp, m: &[T], width: usize, c0: usize, out: &mut [T]) {
    let w = out.len();
    let rows = m.len() / width;
    let block = |b: usize| {
        let mut acc = m[b * ROW_BLOCK * width + c0..][..w].to_vec();
        for row in
            (b * ROW_BLOCK + 1..((b + 1) * ROW_BLOCK).min(rows)).map(|i| &m[i * width + c0..][..w])
        {
            for (a, &x) in acc.iter_mut().zip(row) {
                *a = combine(op, *a, x);
            }
        }
        acc
    };
    let blocks = rows.div_ceil(ROW_BLOCK);
    let parts: Vec<Vec<T>> = if blocks > 1 && rows * w >= 4 * PAR_THRESHOLD {
        (0..blocks).into_par_iter().map(block).collect()
    } else {
        (0..blocks).map(block).collect()
    };
    if let Some(p) = pairwise(op, parts) {
        out.copy_from_slice(&p);
    }
}

/// Combines equal-length partial results as a balanced tree: adjacent
/// pairs level by level, an odd last one carried up. `None` if empty.
pub(crate) fn pairwise<T: Element>(op: ReduceOp, mut parts: Vec<Vec<T>>) -> Option<Vec<T>> {
    while parts.len() > 1 {
        let mut next = Vec::with_capacity(parts.len().div_ceil(2));
        let mut it = parts.into_iter();
        while let Some(mut a) = it.next() {
            if let Some(b) = it.next() {
                for (x, &y) in a.iter_mut().zip(&b) {
                    *x = combine(op, *x, y);
                }
            }
            next.push(a);
        }
        parts = next;
    }
    parts.pop()
}
