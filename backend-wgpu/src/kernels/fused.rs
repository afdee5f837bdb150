//! Fused elementwise kernels: one dispatch of a generated program over
//! broadcast operands (see `shaders/fused.wgsl`).

use std::sync::Arc;

use tensorgraph_core::{FusedExpr, TensorType};

use super::{Operand, WG};
use crate::fused::{Access, FusedProgram};
use crate::params::{Params, broadcast_strides, collapse, to_u32};
use crate::record::{Binding, Recorder};

/// `y = expr(xs...)`, every operand broadcast to `y`'s shape. With
/// `in_place = Some(k)`, `y`'s buffer is operand `k`'s: it is bound once,
/// as the output, and the program reads operand `k` from there.
pub fn fused(
    rec: &mut Recorder<'_>,
    expr: &Arc<FusedExpr>,
    xs: &[Operand],
    y: &Operand,
    in_place: Option<usize>,
) -> Result<(), String> {
    let types: Vec<TensorType> = xs.iter().map(|x| x.ty.clone()).collect();
    let mut program = FusedProgram::new(expr, &types, &y.ty)?;
    if let Some(k) = in_place {
        program = program.in_place(k)?;
    }
    let n = y.numel();
    let flat = program.flat();
    let mut bindings = Vec::with_capacity(xs.len() + 1);
    let mut strided = Vec::new();
    for (k, (x, &a)) in xs.iter().zip(program.access()).enumerate() {
        if !program.binds(k) {
            continue;
        }
        match a {
            Access::Unused => {}
            Access::Full if flat => bindings.push(Binding::vec4s(&x.buffer, x.ty.bytes())),
            Access::Full | Access::Single => bindings.push(x.binding()),
            Access::Strided => {
                bindings.push(x.binding());
                strided.push(broadcast_strides(x.dims(), y.dims()));
            }
        }
    }
    let (params, threads) = if flat {
        // Whole vec4s: the tail's spare lanes land in the buffers' padding
        // (pool buffers are multiples of 16 bytes).
        bindings.push(Binding::vec4s(&y.buffer, y.ty.bytes()));
        let vecs = n.div_ceil(4);
        (Params::new(&[to_u32(vecs)?, 0]), vecs)
    } else {
        bindings.push(y.binding());
        let (dims, strides) = collapse(y.dims(), &strided);
        let mut params = Params::new(&[to_u32(n)?, to_u32(dims.len())?]).array(&dims)?;
        for s in &strides {
            params = params.array(s)?;
        }
        (params, n)
    };
    rec.dispatch(
        &program.shader_key(),
        bindings,
        params,
        (threads as u64).div_ceil(WG),
    )
}
