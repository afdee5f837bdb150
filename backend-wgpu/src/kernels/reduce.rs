//! Reductions over any axis set, as workgroup trees: one output per
//! workgroup (row form) or 16 neighbouring outputs (column form). The
//! value folded at each element is a generated program of the operands
//! there (see `prologue.rs`).

use tensorgraph_core::ReduceOp;

use super::Operand;
use crate::fused::FusedProgram;
use crate::params::{Params, broadcast_strides, collapse, contiguous, to_u32};
use crate::prologue::walked;
use crate::record::Recorder;
use crate::shaders;

/// Outputs per workgroup in the column form (see `reduce.wgsl`).
const COLS: u32 = 16;

/// `y = op(program(xs...))` over `axes` (sorted, distinct) of `dims`, the
/// shape every operand broadcasts to. `y`'s layout is the same with or
/// without kept unit axes.
pub fn reduce(
    rec: &mut Recorder<'_>,
    op: ReduceOp,
    axes: &[usize],
    program: FusedProgram,
    xs: &[Operand],
    dims: &[usize],
    y: &Operand,
) -> Result<(), String> {
    let n_out = y.numel();
    if n_out == 0 {
        return Ok(());
    }
    // Strides over `dims` of the row-major reduced tensor (which decides
    // the form), then of each operand read at strides.
    let mut all = vec![contiguous(dims)];
    let mut bindings = Vec::with_capacity(xs.len() + 1);
    for (k, x) in xs.iter().enumerate() {
        let Some(&a) = program.access().get(k) else {
            return Err(format!("reduction operand {k} is not in the program"));
        };
        if program.binds(k) {
            bindings.push(x.binding());
        }
        if walked(a) {
            all.push(broadcast_strides(x.dims(), dims));
        }
    }
    bindings.push(y.binding());
    let (mut kept, mut red) = (vec![], vec![]);
    let mut kept_strides = vec![Vec::new(); all.len()];
    let mut red_strides = vec![Vec::new(); all.len()];
    for (i, &d) in dims.iter().enumerate() {
        let (to, strides) = if axes.contains(&i) {
            (&mut red, &mut red_strides)
        } else {
            (&mut kept, &mut kept_strides)
        };
        to.push(d);
        for (s, all) in strides.iter_mut().zip(&all) {
            s.push(all[i]);
        }
    }
    let n_red: usize = red.iter().product();
    let (kept, kept_strides) = collapse(&kept, &kept_strides);
    let (red, red_strides) = collapse(&red, &red_strides);
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
    let dtype = program.out();
    let mut params = Params::new(&[
        to_u32(n_out)?,
        to_u32(n_red)?,
        to_u32(kept.len())?,
        to_u32(red.len())?,
        shaders::reduce_identity(op, dtype),
        cols,
        0,
    ])
    .array(&kept)?
    .array(&red)?;
    for (k, r) in kept_strides.iter().zip(&red_strides).skip(1) {
        params = params.array(k)?.array(r)?;
    }
    let key = shaders::reduce(op, program, wg);
    let groups = (n_out as u64).div_ceil(u64::from(cols));
    rec.dispatch(&key, bindings, params, groups)
}
