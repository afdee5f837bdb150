//! Reductions over any axis set, as workgroup trees: one output per
//! workgroup (row form) or 16 neighbouring outputs (column form).

use tensorgraph_core::ReduceOp;

use super::Operand;
use crate::params::{Params, collapse, contiguous, to_u32};
use crate::record::Recorder;
use crate::shaders;

/// Outputs per workgroup in the column form (see `reduce.wgsl`).
const COLS: u32 = 16;

/// `y = op(x)` over `axes` (sorted, distinct). `y`'s layout is the same
/// with or without kept unit axes.
pub fn reduce(
    rec: &mut Recorder<'_>,
    op: ReduceOp,
    axes: &[usize],
    x: &Operand,
    y: &Operand,
) -> Result<(), String> {
    let dims = x.dims();
    let strides = contiguous(dims);
    let (mut kept, mut kept_strides, mut red, mut red_strides) = (vec![], vec![], vec![], vec![]);
    for (i, (&d, &s)) in dims.iter().zip(&strides).enumerate() {
        if axes.contains(&i) {
            red.push(d);
            red_strides.push(s);
        } else {
            kept.push(d);
            kept_strides.push(s);
        }
    }
    let n_out = y.numel();
    if n_out == 0 {
        return Ok(());
    }
    let n_red: usize = red.iter().product();
    let (kept, kept_strides) = collapse(&kept, &[kept_strides]);
    let (red, red_strides) = collapse(&red, &[red_strides]);
    let wg = if n_red <= 64 {
        shaders::REDUCE_WGS[0]
    } else {
        shaders::REDUCE_WGS[1]
    };
    // Column form when the innermost axis is kept (neighbouring outputs
    // are contiguous) and there are enough outputs to fill the columns.
    let inner_kept = kept_strides[0].last() == Some(&1);
    let cols: u32 = if inner_kept && n_out >= COLS as usize {
        COLS
    } else {
        1
    };
    let dtype = x.ty.dtype;
    let params = Params::new(&[
        to_u32(n_out)?,
        to_u32(n_red)?,
        to_u32(kept.len())?,
        to_u32(red.len())?,
        shaders::reduce_identity(op, dtype),
        cols,
    ])
    .array(&kept)?
    .array(&kept_strides[0])?
    .array(&red)?
    .array(&red_strides[0])?;
    let key = shaders::reduce(op, dtype, wg);
    let groups = (n_out as u64).div_ceil(u64::from(cols));
    rec.dispatch(&key, vec![x.binding(), y.binding()], params, groups)
}
