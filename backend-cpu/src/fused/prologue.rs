//! Reductions of a fused prologue: the reduced tensor is the program over
//! its broadcast operands, evaluated a block at a time and reduced as it
//! is produced, so it is never materialised whole.
//!
//! Results are bit-for-bit those of the fused kernel followed by the
//! reduction kernel: the prologue's elements do not depend on how the
//! output is cut, and the reduction below follows the same summation
//! order as `reduce.rs` (whole lanes, or blocks of [`ROW_BLOCK`] rows
//! combined pairwise). Layouts that kernel reduces some other way (non
//! contiguous axes, a few long lanes split across the pool, empty
//! reductions) evaluate the prologue whole and hand it to that kernel.

use ndarray::{ArrayD, IxDyn};
use rayon::prelude::*;
use tensorgraph_core::{DType, FusedExpr, ReduceOp, Shape, TensorType, Value};

use super::{Lane, Program, fused_with, with_program};
use crate::element::{KResult, PAR_THRESHOLD, dispatch};
use crate::pool::{Alloc, Pooled};
use crate::reduce::{COL_CHUNK, ROW_BLOCK, Reduce, combine, finish, lane, pairwise};

/// Prologue elements evaluated at once per task (whole lanes).
const BLOCK: usize = 16 * 1024;

/// A reduction of a fused prologue.
pub(crate) struct Prologue<'a> {
    /// The prologue program.
    pub(crate) expr: &'a FusedExpr,
    /// The shape of the reduced tensor.
    pub(crate) shape: &'a Shape,
    /// Which reduction.
    pub(crate) op: ReduceOp,
    /// Axes reduced, sorted ascending.
    pub(crate) axes: &'a [usize],
    /// The output type.
    pub(crate) out: &'a TensorType,
}

/// The block form `[outer, r, inner]` of the reduced tensor.
#[derive(Debug, Clone, Copy)]
struct Blocks {
    outer: usize,
    r: usize,
    inner: usize,
}

/// Evaluates and reduces `p` over `inputs`.
pub(crate) fn reduce_prologue(
    p: &Prologue<'_>,
    inputs: &[&Value],
    alloc: Alloc<'_>,
) -> KResult<Value> {
    let dtype = *p.expr.dtypes.last().ok_or("empty prologue program")?;
    if dtype != p.out.dtype {
        return Err(format!(
            "{} of a {dtype} prologue into {}",
            p.op.name(),
            p.out
        ));
    }
    let full = TensorType::new(dtype, p.shape.clone());
    let threads = rayon::current_num_threads();
    let Some(blocks) = streamable(p.axes, p.shape.dims(), threads) else {
        // The whole prologue, in scratch the pool gets back.
        let x = fused_with(p.expr, &full, inputs, alloc)?;
        let reduce = Reduce {
            op: p.op,
            axes: p.axes,
            shape: &p.out.shape,
        };
        let result = dispatch(&reduce, &[&x], alloc)?
            .pop()
            .ok_or_else(|| format!("{} returned nothing", p.op.name()));
        alloc.recycle(x);
        return result;
    };
    if blocks.outer * blocks.inner != p.out.shape.numel() {
        return Err(format!(
            "{} of {} over {:?} into {}",
            p.op.name(),
            p.shape,
            p.axes,
            p.out
        ));
    }
    let operands: Vec<Option<&Value>> = inputs.iter().copied().map(Some).collect();
    let dims = p.out.shape.dims();
    with_program(p.expr, &full, &operands, |program| match dtype {
        DType::F32 => streamed::<f32>(program, p.op, blocks, dims, alloc),
        DType::I32 => streamed::<i32>(program, p.op, blocks, dims, alloc),
    })
}

/// The block form when the reduction can stream: sorted, contiguous,
/// non-empty axes over a non-empty tensor, and not the case the reduction
/// kernel splits single lanes across the pool.
fn streamable(axes: &[usize], dims: &[usize], threads: usize) -> Option<Blocks> {
    let (&first, &last) = (axes.first()?, axes.last()?);
    if last >= dims.len() || axes.windows(2).any(|w| w[1] != w[0] + 1) {
        return None;
    }
    let b = Blocks {
        outer: dims[..first].iter().product(),
        r: dims[first..=last].iter().product(),
        inner: dims[last + 1..].iter().product(),
    };
    let total = b.outer * b.r * b.inner;
    if total == 0 || (b.inner == 1 && total >= PAR_THRESHOLD && b.outer < 2 * threads) {
        return None;
    }
    Some(b)
}

/// Streams the reduction of `program`'s output into an array of `dims`.
fn streamed<T: Lane + Pooled>(
    program: &Program<'_>,
    op: ReduceOp,
    b: Blocks,
    dims: &[usize],
    alloc: Alloc<'_>,
) -> KResult<Value> {
    // Every element is written: by `lanes`, or by `columns` per group.
    let mut out = alloc.vec::<T>(b.outer * b.inner);
    let big = b.outer * b.r * b.inner >= PAR_THRESHOLD;
    if b.inner == 1 {
        lanes(program, op, b.r, big, &mut out)?;
    } else {
        let run = |(g, o): (usize, &mut [T])| {
            let (a, cc) = (
                g / b.inner.div_ceil(COL_CHUNK),
                g % b.inner.div_ceil(COL_CHUNK),
            );
            columns(program, op, b, a, cc * COL_CHUNK, o)
        };
        let groups = out
            .chunks_mut(b.inner)
            .flat_map(|row| row.chunks_mut(COL_CHUNK));
        if big {
            let groups: Vec<&mut [T]> = groups.collect();
            groups.into_par_iter().enumerate().try_for_each(run)?;
        } else {
            groups.enumerate().try_for_each(run)?;
        }
    }
    let out = ArrayD::from_shape_vec(IxDyn(dims), out).map_err(|e| e.to_string())?;
    Ok(T::into_value(out))
}

/// Rows of `r` elements, each reduced whole: tasks of about [`BLOCK`]
/// elements evaluate their rows into a buffer and reduce them.
fn lanes<T: Lane>(
    program: &Program<'_>,
    op: ReduceOp,
    r: usize,
    big: bool,
    out: &mut [T],
) -> KResult<()> {
    let rows = (BLOCK / r).max(1);
    let task = |(t, o): (usize, &mut [T])| -> KResult<()> {
        let mut buf = vec![T::default(); o.len() * r];
        program.run_part(t * rows * r, &mut buf, &mut program.scratch())?;
        for (x, l) in o.iter_mut().zip(buf.chunks(r)) {
            *x = finish(op, lane(op, l), r);
        }
        Ok(())
    };
    if big {
        out.par_chunks_mut(rows).enumerate().try_for_each(task)
    } else {
        out.chunks_mut(rows).enumerate().try_for_each(task)
    }
}

/// Columns `c0 .. c0 + out.len()` of outer index `a`: blocks of
/// [`ROW_BLOCK`] rows accumulated in order, one row segment evaluated at
/// a time, the block partials combined pairwise.
fn columns<T: Lane>(
    program: &Program<'_>,
    op: ReduceOp,
    b: Blocks,
    a: usize,
    c0: usize,
    out: &mut [T],
) -> KResult<()> {
    let w = out.len();
    let base = a * b.r * b.inner + c0;
    let block = |k: usize| -> KResult<Vec<T>> {
        let (r0, r1) = (k * ROW_BLOCK, ((k + 1) * ROW_BLOCK).min(b.r));
        let mut s = program.scratch();
        if w == b.inner {
            // Whole rows: the block is one contiguous range.
            let mut buf = vec![T::default(); (r1 - r0) * w];
            program.run_part(base + r0 * b.inner, &mut buf, &mut s)?;
            let mut rows = buf.chunks(w);
            let mut acc = rows.next().ok_or("empty row block")?.to_vec();
            for row in rows {
                for (x, &y) in acc.iter_mut().zip(row) {
                    *x = combine(op, *x, y);
                }
            }
            return Ok(acc);
        }
        // Part of each row: one segment at a time.
        let mut acc = vec![T::default(); w];
        program.run_part(base + r0 * b.inner, &mut acc, &mut s)?;
        let mut row = vec![T::default(); w];
        for i in r0 + 1..r1 {
            program.run_part(base + i * b.inner, &mut row, &mut s)?;
            for (x, &y) in acc.iter_mut().zip(&row) {
                *x = combine(op, *x, y);
            }
        }
        Ok(acc)
    };
    let blocks = b.r.div_ceil(ROW_BLOCK);
    let parts: Vec<Vec<T>> = if blocks > 1 && b.r * w >= 4 * PAR_THRESHOLD {
        (0..blocks)
            .into_par_iter()
            .map(block)
            .collect::<KResult<_>>()?
    } else {
        (0..blocks).map(block).collect::<KResult<_>>()?
    };
    let sums = pairwise(op, parts).ok_or("no rows to reduce")?;
    for (o, x) in out.iter_mut().zip(sums) {
        *o = finish(op, x, b.r);
    }
    Ok(())
}
